// unionterm workbench page: one WebSocket brings the state, then the parts that change;
// clicks are JSON POSTs to /api/<action>. No framework, no build step.
"use strict";

const state = {};
const queueHistory = [];
const QUEUE_SAMPLES = 120;
const KIND_SHORT = { uid: "badge", union: "union", pan: "bank", ecard: "e-card" };

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else if (key === "disabled") node.disabled = Boolean(value);
    else node[key] = value;
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

// ---- talking to the server -------------------------------------------------------------

function connect() {
  const ws = new WebSocket(`ws://${location.host}/ws`);
  ws.onopen = () => setPill($("#page-link"), true, "page live");
  ws.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    if (msg.type === "state") for (const key of Object.keys(state)) delete state[key];
    Object.assign(state, msg.state);
    render(Object.keys(msg.state));
  };
  ws.onclose = () => {
    setPill($("#page-link"), false, "page offline");
    setTimeout(connect, 1000);
  };
}

async function act(name, body = {}, button = null) {
  if (button) { button.disabled = true; button.classList.add("busy"); }
  try {
    const response = await fetch(`/api/${name}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (!answer.ok) toast(answer.error, true);
    else if ("decision" in answer && !answer.decision) toast(describe(null), true);
    return answer;
  } catch (err) {
    toast(`request failed: ${err}`, true);
    return { ok: false };
  } finally {
    if (button) { button.classList.remove("busy"); button.disabled = false; render(["rack", "network", "capabilities"]); }
  }
}

let toastTimer = null;
function toast(text, error = false) {
  const box = $("#toast");
  box.textContent = text;
  box.className = error ? "show error" : "show";
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.className = ""; }, 3500);
}

function yuan(fen) {
  return `¥${(fen / 100).toFixed(2)}`;
}

function describe(decision) {
  if (!decision) return "no decision: the card left before it was read (no transaction)";
  const who = decision.member_no ? ` ${decision.member_no} ${decision.name}` : "";
  const money = decision.amount_fen
    ? ` · amount ${yuan(decision.amount_fen)} subsidy ${yuan(decision.subsidy_fen)} to pay ${yuan(decision.to_pay_fen)}` : "";
  return `${decision.verdict.toUpperCase()} ${decision.reason}${who} (${decision.profile || "?"}, ${decision.ms} ms)${money}`;
}

function setPill(node, on, text) { node.dataset.on = String(on); node.textContent = text; }

// ---- rendering, one function per part of the state ------------------------------------

const renderers = {
  terminal(t) {
    $("#term-id").textContent = t.id;
    $("#term-mode").textContent = t.mode;
    $("#term-clock").textContent = t.clock || "–";
    $("#term-readers").textContent = t.readers.length ? `reader ${t.readers.join(", ")}` : "no reader";
    setPill($("#term-state"), t.state === "running", t.state);
  },
  oled(frame) {
    const canvas = $("#oled");
    canvas.width = frame.w; canvas.height = frame.h;
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(frame.w, frame.h);
    const raw = atob(frame.bits);
    const stride = Math.ceil(frame.w / 8);
    for (let y = 0; y < frame.h; y++) {
      for (let x = 0; x < frame.w; x++) {
        const lit = (raw.charCodeAt(y * stride + (x >> 3)) >> (7 - (x & 7))) & 1;
        const i = (y * frame.w + x) * 4;
        image.data[i] = lit ? 168 : 0; image.data[i + 1] = lit ? 236 : 0; image.data[i + 2] = lit ? 255 : 0;
        image.data[i + 3] = 255;
      }
    }
    ctx.putImageData(image, 0, 0);
    canvas.dataset.frame = String(frame.frame);
    $("#oled-frame").textContent = frame.frame;
  },
  outputs(o) {
    for (const name of ["green", "red", "buzzer", "relay"]) $(`#out-${name}`).dataset.on = String(o[name]);
  },
  inputs(i) {
    const door = $("#door-toggle");
    door.dataset.open = String(i.door_open);
    door.textContent = i.door_open ? "door: OPEN (click to close)" : "door: closed (click to open)";
    $("#exit-state").textContent = i.exit_pressed ? "exit button held" : "";
  },
  reader(r) {
    const held = r.held ? (state.rack || []).find((c) => c.id === r.held) : null;
    $("#reader-state").textContent = held ? `${held.label} ${held.owner}` : (r.present ? "a card" : "empty");
    $("#lift").disabled = !r.held;
    renderers.rack(state.rack || []);
  },
  rack(cards) {
    const held = state.reader ? state.reader.held : "";
    const members = new Map();
    const odd = [];
    for (const card of cards) {
      if (card.variant !== "genuine") { odd.push(card); continue; }
      if (!members.has(card.owner)) members.set(card.owner, []);
      members.get(card.owner).push(card);
    }
    const body = $("#rack-members tbody");
    body.replaceChildren(...[...members.entries()].map(([owner, list]) => el("tr",
      { class: list[0].status },
      el("td", { class: "who" }, owner, el("small", {}, `${list[0].name} · ${list[0].status}`)),
      el("td", {}, ...list.map((card) => chip(card, held, KIND_SHORT[card.kind] || card.kind))))));
    $("#rack-odd").replaceChildren(...odd.map((card) => chip(card, held)));
    renderBlockChoices(cards);
  },
  network(n) {
    setPill($("#broker-state"), n.broker, n.busy ? `broker ${n.busy}…` : (n.broker ? "broker up" : "broker DOWN"));
    setPill($("#uplink-state"), n.uplink, n.uplink ? "terminal connected" : "terminal offline");
    $("#broker-down").disabled = !n.broker || Boolean(n.busy);
    $("#broker-up").disabled = n.broker || Boolean(n.busy);
    $("#unsent").textContent = n.unsent ?? "–";
    $("#unacked").textContent = n.unacked ?? "–";
    $("#watermarks").textContent = `journal: last seq ${n.last_seq ?? "–"}, at broker up to ${n.published_seq ?? "–"}, `
      + `acknowledged up to ${n.acked_seq ?? "–"} · mosquitto 127.0.0.1:${n.port}`;
    queueHistory.push(n.unsent || 0);
    if (queueHistory.length > QUEUE_SAMPLES) queueHistory.shift();
    drawQueue();
  },
  last(d) {
    const box = $("#last");
    box.dataset.verdict = d ? d.verdict : "";
    box.dataset.seq = d && d.seq ? String(d.seq) : "";
    $("#last-body").textContent = d ? `${d.seq ? `#${d.seq} ` : ""}${describe(d)}` : "no tap yet";
  },
  feed(f) {
    setPill($("#feed-state"), f.connected, f.connected ? "subscribed" : "reconnecting");
    $("#feed tbody").replaceChildren(...f.rows.map((row) => el("tr",
      { class: `${row.decision} ${row.acked ? "acked" : ""}`, "data-seq": String(row.seq), "data-acked": String(row.acked) },
      el("td", {}, row.seq),
      el("td", {}, row.time_ms ? new Date(row.time_ms).toLocaleTimeString("zh-CN", { hour12: false, timeZone: "Asia/Shanghai" }) : ""),
      el("td", {}, row.member_no || "—"),
      el("td", {}, `${row.profile || ""} ${row.strength || ""}`),
      el("td", { class: "decision" }, row.decision),
      el("td", { class: "reason" }, row.reason),
      el("td", { class: "money", title: row.amount_fen ? `subsidy ${yuan(row.subsidy_fen)}, to pay ${yuan(row.to_pay_fen)}` : "" },
        row.amount_fen ? yuan(row.amount_fen) : ""),
      el("td", { class: "ack", title: row.acked ? "stored by the back office" : "not acknowledged yet" },
        row.acked ? "✓" : "…"))));
    $("#ack-note").textContent = f.repeats ? `${f.repeats} resent record(s) received again and shown once` : "";
  },
  capabilities(caps) {
    const byName = Object.fromEntries(caps.map((c) => [c.name, c]));
    const why = (name) => (byName[name] && !byName[name].available ? byName[name].why : "");
    for (const [name, box, controls] of [
      ["keypad", "#keypad-why", ["#keys button"]],
      ["ecr", "#ecr-why", ["#ecr-amount", "#ecr-send", "#ecr-status"]],
      ["sync", "#delta-why", ["#publish-delta", "#block", "#unblock"]],
    ]) {
      $(box).textContent = why(name);
      $(box).hidden = !why(name);
      for (const sel of controls) for (const node of document.querySelectorAll(sel)) node.disabled = Boolean(why(name));
    }
    const missing = caps.filter((c) => !c.available);
    $("#capabilities").replaceChildren(...missing.map((c) => el("li", {}, `${c.label}: ${c.why}`)));
    $("#capabilities-head").hidden = !missing.length;
  },
  keypad(k) {
    const pad = $("#keys");
    pad.style.gridTemplateColumns = `repeat(${k.columns}, 44px)`;
    if (pad.dataset.keys !== k.keys) {
      pad.dataset.keys = k.keys;
      pad.replaceChildren(...[...k.keys].map((key) => el("button",
        { "data-key": key, class: /[A-D]/.test(key) ? "letter" : "", onclick: (e) => act("key", { key }, e.target) }, key)));
      renderers.capabilities(state.capabilities || []);
    }
    for (const button of pad.querySelectorAll("button")) {
      button.classList.toggle("pressed", k.pressed.includes(button.dataset.key));
    }
    $("#keypad-hint").textContent = k.hint;
  },
  ecr(e) {
    const badge = $("#ecr-state");
    badge.dataset.waiting = String(Boolean(e.waiting));
    badge.textContent = e.waiting ? `waiting for a card: ${e.waiting.fields.ecr_ref} ${yuan(Number(e.waiting.fields.amount_fen))}`
      : (e.linked ? "idle" : "not linked");
    const reply = $("#ecr-reply");
    const r = e.reply;
    reply.dataset.decision = r ? r.fields.approved : "";
    reply.dataset.seq = r ? String(r.seq) : "";
    reply.textContent = r
      ? `REPLY #${r.seq} ${r.fields.approved === "A" ? "APPROVED" : "DECLINED"} ${r.fields.reason} · amount ${yuan(Number(r.fields.amount_fen))}`
        + ` · discount ${yuan(Number(r.fields.discount_fen))} · to pay ${yuan(Number(r.fields.to_pay_fen))}`
        + (r.fields.tx_id ? ` · tx ${r.fields.tx_id}` : "")
      : "no answer yet";
    $("#ecr-log tbody").replaceChildren(...e.log.map((row) => el("tr", { class: row.dir, title: row.wire },
      el("td", {}, row.dir === "out" ? "→" : "←"),
      el("td", {}, row.type),
      el("td", {}, row.seq ?? ""),
      el("td", {}, Object.entries(row.fields).map(([k, v]) => `${k}=${v}`).join(" ") || row.wire))));
    $("#ecr-port").textContent = `cash register on ${e.port}; hover a frame for its bytes`;
  },
  office(o) {
    const member = $("#delta-member");
    const chosen = member.value;
    member.replaceChildren(...o.members.map((m) => el("option", { value: m.member_no },
      `${m.member_no} ${m.name} · ${m.status}`)));
    if (chosen) member.value = chosen;
    const status = $("#delta-status");
    if (!status.options.length) status.replaceChildren(...o.statuses.map((s) => el("option", { value: s }, s)));
    const pub = o.published;
    const held = o.terminal;
    const listState = $("#lists");
    listState.dataset.published = pub ? String(pub.version) : "0";
    listState.dataset.held = String(held.version);
    listState.textContent = `list ${o.scope}: back office v${pub ? pub.version : "–"} (${pub ? pub.count : 0} members), `
      + `terminal holds v${held.version} (${held.count}) · hot list: back office #${o.hotlist}, terminal #${held.hotlist}`
      + (o.serving ? "" : " · back office reconnecting");
    const told = state.terminal ? o.reported[state.terminal.id] : null;
    $("#reported").textContent = told
      ? `the terminal reported: ${Object.entries(told.lists).map(([s, v]) => `${s} v${v}`).join(", ")}, hot list #${told.hotlist}`
      : "no report from the terminal yet";
    $("#office-last").textContent = o.last ? `last published: ${o.last}` : "";
  },
  modes(m) {
    $("#config-text").textContent = m.config;
    $("#mode-choices").replaceChildren(...m.choices.map((c) => el("div",
      { class: `mode-choice ${c.name === m.current ? "current" : ""}` },
      el("button", { "data-mode": c.name, onclick: (e) => switchMode(c.name, e.target) },
        c.name === m.current ? `${c.name} (running, restart)` : `switch to ${c.name}`))));
    $("#examples").replaceChildren(...m.choices.map((c) => el("details", {},
      el("summary", {}, `config/${c.name}.toml`), el("pre", {}, c.example || "(none)"))));
  },
  taps() {},
};

function chip(card, held, label = null) {
  const classes = ["chip"];
  if (card.why) classes.push("off");
  if (card.blocked) classes.push("blocked");
  if (card.id === held) classes.push("held");
  const node = el("span", { class: classes.join(" "), title: card.why || `${card.kind} · ${card.variant}` },
    label || card.label);
  if (card.action === "scan") {
    node.append(el("button", { "data-act": "scan", "data-card": card.id, disabled: card.why,
      onclick: (e) => act("scan", { card: card.id }, e.target) }, "show QR"));
  } else {
    node.append(
      el("button", { "data-act": "tap", "data-card": card.id, disabled: card.why,
        onclick: (e) => act("tap", { card: card.id }, e.target) }, "tap"),
      el("button", { "data-act": "place", "data-card": card.id, disabled: card.why || card.id === held,
        onclick: (e) => act("place", { card: card.id }, e.target) }, "hold"));
  }
  return node;
}

function renderBlockChoices(cards) {
  const select = $("#block-card");
  const chosen = select.value;
  const blockable = cards.filter((c) => c.blockable);
  select.replaceChildren(...blockable.map((c) => el("option", { value: c.id },
    `${c.owner} ${c.name} · ${c.label}${c.blocked ? " (blocked)" : ""}`)));
  if (chosen) select.value = chosen;
  const blocked = blockable.filter((c) => c.blocked);
  $("#blocked-list").textContent = blocked.length
    ? `hot list: ${blocked.map((c) => `${c.owner} ${c.label}`).join(", ")}` : "hot list: empty";
}

function drawQueue() {
  const canvas = $("#queue-chart");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const top = Math.max(3, ...queueHistory);
  const w = canvas.width / QUEUE_SAMPLES;
  ctx.fillStyle = "#ffb020";
  queueHistory.forEach((v, i) => {
    const h = (v / top) * (canvas.height - 4);
    ctx.fillRect(i * w, canvas.height - h, Math.max(1, w - 1), h);
  });
}

function render(keys) {
  for (const key of keys) if (renderers[key] && key in state) renderers[key](state[key]);
}

async function switchMode(mode, button) {
  const answer = await act("mode", { mode }, button);
  if (answer.ok) toast(`terminal restarted in mode ${answer.mode}`);
}

// ---- wiring ---------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#lift").onclick = (e) => act("lift", {}, e.target);
  $("#door-toggle").onclick = (e) => act("door", { open: e.target.dataset.open !== "true" }, e.target);
  $("#exit-press").onclick = (e) => act("exit", {}, e.target);
  $("#broker-down").onclick = (e) => act("broker", { up: false }, e.target);
  $("#broker-up").onclick = (e) => act("broker", { up: true }, e.target);
  $("#block").onclick = (e) => act("block", { card: $("#block-card").value, blocked: true }, e.target);
  $("#unblock").onclick = (e) => act("block", { card: $("#block-card").value, blocked: false }, e.target);
  $("#publish-delta").onclick = async (e) => {
    const answer = await act("delta", { member: $("#delta-member").value, status: $("#delta-status").value }, e.target);
    if (answer.ok) toast(`delta v${answer.version} published${answer.applied ? ", applied by the terminal" : ""}`);
  };
  const sendSale = async () => {
    const answer = await act("ecr-sale", { amount: $("#ecr-amount").value }, $("#ecr-send"));
    if (answer.ok) toast(`SALE ${answer.sent.fields.ecr_ref} sent: tap a member's card`);
  };
  $("#ecr-send").onclick = sendSale;
  $("#ecr-amount").onkeydown = (e) => { if (e.key === "Enter") sendSale(); };
  $("#ecr-status").onclick = async (e) => {
    const answer = await act("ecr-status", {}, e.target);
    if (answer.ok) toast(`terminal says: ${answer.answer.fields.state}`);
  };
  connect();
});
