"""The simulated UID card answers like a PC/SC reader does for a memory card."""

from simulator.cards.uid import UidCard


def test_uid_card_answers_get_data() -> None:
    card = UidCard(bytes.fromhex("04A1B2C3D4E5F6"))
    assert card.respond(bytes.fromhex("FFCA000000")) == bytes.fromhex("04A1B2C3D4E5F69000")
    assert card.respond(bytes.fromhex("FFCA000004")) == bytes.fromhex("04A1B2C39000")
    assert card.respond(bytes.fromhex("FFCA010000")) == bytes.fromhex("6A86")
    assert card.respond(bytes.fromhex("00A4040000")) == bytes.fromhex("6D00")
