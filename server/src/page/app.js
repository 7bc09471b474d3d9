// The live page of hongbao serve: one member's view of one group, over the REST API and the
// member's WebSocket. No framework and no build step: the server embeds this file.
"use strict";

const state = {
  session: null,          // { token, device, user, group, org, name }
  socket: null,
  since: null,            // { epoch, seq } of the last event seen
  packets: new Map(),     // packet id -> { view fields, claims: [], mine }
  transfers: new Map(),   // transfer id -> view fields
  retry: 500,
};

const $ = (sel) => document.querySelector(sel);
const yuan = (amount) => "¥" + (amount == null ? "—" : String(amount));

// Amounts travel as decimal yuan strings ("12.34"); an input must have at most two decimals.
function amountInput(text) {
  const t = String(text).trim();
  if (!/^\d+(\.\d{1,2})?$/.test(t)) throw new Error("amount must be yuan with at most two decimals 金额格式错误");
  const [whole, frac = ""] = t.split(".");
  return whole + "." + (frac + "00").slice(0, 2);
}

// Fen as an integer (no floating point anywhere near money), and back.
function fenOf(amount) {
  const [whole, frac] = amount.split(".");
  return Number(whole) * 100 + Number(frac);
}
function amountOfFen(fen) {
  return Math.floor(fen / 100) + "." + String(fen % 100).padStart(2, "0");
}

// Ids are chosen by the client so a retry is the same request; below 2^53 for JavaScript.
function newId() {
  return Math.floor(Math.random() * 2 ** 52) + 1;
}

function signIn() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get("token")) {
    const session = {
      token: params.get("token"), device: params.get("device"), user: Number(params.get("user")),
      group: Number(params.get("group")), org: params.get("org") ? Number(params.get("org")) : null,
    };
    sessionStorage.setItem("hongbao.session", JSON.stringify(session));
    history.replaceState(null, "", location.pathname);
  }
  const saved = sessionStorage.getItem("hongbao.session");
  state.session = saved ? JSON.parse(saved) : null;
  const since = sessionStorage.getItem("hongbao.since");
  state.since = since ? JSON.parse(since) : null;
}

async function api(method, path, body) {
  const headers = { "Authorization": "Bearer " + state.session.token, "X-Device-Id": state.session.device };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const json = await res.json().catch(() => ({}));
  if (!res.ok) throw Object.assign(new Error(json.message || res.statusText), { body: json, status: res.status });
  return json;
}

function notice(text) {
  $("#notice").textContent = text;
}

async function refreshBalance() {
  try {
    const me = await api("GET", "/v1/me");
    $("#balance").textContent = yuan(me.balance);
    const cooling = me.usage && me.usage.cooling_off;
    if (cooling && cooling.secs > 0 && !$("#cooling-form").dataset.touched) {
      $("#cooling-threshold").value = cooling.threshold;
      $("#cooling-minutes").value = Math.round(cooling.secs / 60);
    }
  } catch (e) { notice(e.message); }
}

// ---- the socket ----

function connect() {
  const proto = location.protocol === "https:" ? "wss://" : "ws://";
  const socket = new WebSocket(proto + location.host + "/ws");
  state.socket = socket;
  socket.onopen = () => {
    const since = state.since || { seq: 0 };   // first time: the recent history of this run
    socket.send(JSON.stringify({ op: "auth", token: state.session.token, device: state.session.device,
      groups: [state.session.group], since }));
  };
  socket.onmessage = (m) => onMessage(JSON.parse(m.data));
  socket.onclose = (e) => {
    $("#link").textContent = "offline 离线" + (e.reason ? " (" + e.reason + ")" : "");
    setTimeout(connect, state.retry);
    state.retry = Math.min(state.retry * 2, 10000);
  };
}

function onMessage(msg) {
  switch (msg.type) {
    case "hello":
      state.retry = 500;
      $("#link").textContent = "live 实时";
      if (!state.since || state.since.epoch !== msg.epoch) remember(msg.epoch, 0);
      break;
    case "event":
      onEvent(msg.event);
      remember(state.since.epoch, msg.seq);
      break;
    case "resync":
      // Events were missed for good: read the state again.
      for (const id of state.packets.keys()) loadPacket(id);
      refreshBalance();
      break;
    case "reply":
      onGrabReply(msg);
      break;
    case "error":
      notice((msg.error && msg.error.message) || "refused");
      break;
  }
}

function remember(epoch, seq) {
  state.since = { epoch, seq };
  sessionStorage.setItem("hongbao.since", JSON.stringify(state.since));
}

function onEvent(e) {
  const me = state.session.user;
  switch (e.kind) {
    case "packet_sent":
    case "packet_opened":
      upsertPacket(e.packet, { sender: e.sender, greeting: e.greeting, total: e.total, shares: e.shares,
        shares_left: e.shares, status: "open", expires_at: e.expires_at });
      if (e.sender !== me) notice("New packet from member " + e.sender + " 新红包");
      else refreshBalance();
      break;
    case "packet_cooling":
      upsertPacket(e.packet, { sender: e.sender, total: e.total, status: "cooling_off", until: e.until });
      loadPacket(e.packet);
      break;
    case "grabbed": {
      const p = upsertPacket(e.packet, { shares_left: e.shares_left });
      if (!p.claims.some((c) => c.position === e.position)) {
        p.claims.push({ user: e.user, amount: e.amount, position: e.position });
        p.claims.sort((a, b) => a.position - b.position);
      }
      if (e.user === me) { p.mine = e.amount; refreshBalance(); }
      render(e.packet);
      break;
    }
    case "sold_out":
      upsertPacket(e.packet, { status: "sold_out", best_luck: { user: e.best_luck, amount: e.best_amount }, shares_left: 0 });
      break;
    case "expired":
    case "packet_cancelled":
    case "packet_recalled":
      upsertPacket(e.packet, { status: e.kind.replace("packet_", ""), refunded: e.refunded });
      if (e.sender === me) refreshBalance();
      break;
    case "awaiting_approval":
    case "approved":
    case "rejected":
      if (e.subject.kind === "packet") loadPacket(e.subject.id);
      if (e.subject.kind === "transfer") loadTransfer(e.subject.id);
      refreshBalance();
      break;
    case "transfer_sent":
    case "transfer_arrived":
    case "transfer_settled":
      loadTransfer(e.transfer);
      refreshBalance();
      break;
    case "deposited":
    case "withdrawn":
      // A replayed event carries an old balance: read the current one.
      refreshBalance();
      break;
  }
}

// ---- packets ----

function upsertPacket(id, fields) {
  let p = state.packets.get(id);
  if (!p) { p = { id, claims: [], mine: null }; state.packets.set(id, p); }
  Object.assign(p, fields);
  render(id);
  return p;
}

async function loadPacket(id) {
  try {
    const v = await api("GET", "/v1/packets/" + id);
    const status = v.status.kind;
    const p = upsertPacket(id, { sender: v.sender, greeting: v.greeting, total: v.total, shares: v.shares,
      shares_left: v.shares_left, status, until: v.status.until, best_luck: v.best_luck, refunded: v.status.refunded });
    p.claims = v.claims;
    const mine = v.claims.find((c) => c.user === state.session.user);
    if (mine) p.mine = mine.amount;
    render(id);
  } catch (e) { /* the packet may be retired; keep what was shown */ }
}

const STATUS = {
  open: "Open 可领取", sold_out: "Sold out 已抢完", expired: "Expired 已过期", cancelled: "Cancelled 已禁止领取",
  recalled: "Recalled 已撤回", cooling_off: "Cooling off 冷静期", awaiting_approval: "Awaiting approval 待审批",
  rejected: "Rejected 已驳回",
};

function render(id) {
  const p = state.packets.get(id);
  let li = document.querySelector('.packet[data-id="' + id + '"]');
  if (!li) {
    li = document.createElement("li");
    li.className = "packet";
    li.dataset.id = id;
    $("#packets").prepend(li);
  }
  const me = state.session.user;
  li.replaceChildren();
  const head = el("div", "head");
  head.append(el("span", "greeting", p.greeting || "红包"), el("span", "from", "from 来自 member " + (p.sender ?? "?")),
    el("span", "total", yuan(p.total)), el("span", "left", (p.shares_left ?? "?") + "/" + (p.shares ?? "?") + " left 剩余"));
  const stateText = STATUS[p.status] || p.status || "";
  const st = el("span", "state", stateText);
  head.append(st);
  li.append(head);
  if (p.status === "cooling_off" && p.until) {
    const secs = Math.max(0, Math.ceil((p.until - Date.now()) / 1000));
    st.textContent = "Cooling off 冷静期 " + Math.floor(secs / 60) + ":" + String(secs % 60).padStart(2, "0");
    if (p.sender === me) {
      li.append(button("Forbid claiming 禁止领取", "cancel", async () => {
        try { const r = await api("POST", "/v1/packets/" + id + "/cancel", {}); upsertPacket(id, { status: "cancelled", refunded: r.refunded }); refreshBalance(); }
        catch (e) { notice(e.message); }
      }));
    }
  }
  if (p.mine != null) {
    li.append(el("div", "mine", "You got 你抢到了 " + yuan(p.mine)));
  } else if (p.status === "open") {
    li.append(button("Grab 抢", "grab", () => grab(id)));
  }
  if (state.session.org && (p.status === "open") && p.sender !== me) {
    li.append(button("Admin recall 撤回", "recall secondary", async () => {
      const reason = prompt("Reason 撤回原因", "sent to the wrong group") || "";
      try { const r = await api("POST", "/v1/packets/" + id + "/recall", { org: state.session.org, reason }); notice("Recalled 已撤回 " + yuan(r.refunded)); }
      catch (e) { notice(e.message); }
    }));
  }
  if (p.refunded && p.status !== "open") li.append(el("div", "refund", "Refunded 退回 " + yuan(p.refunded)));
  if (p.best_luck) li.append(el("div", "best-luck", "Best luck 手气最佳: member " + p.best_luck.user + " " + yuan(p.best_luck.amount)));
  const claims = el("ol", "claims");
  for (const c of p.claims) {
    const item = el("li", "claim");
    item.append(el("span", "", "#" + c.position + " member " + c.user + (c.user === me ? " (you 你)" : "")), el("span", "amount", yuan(c.amount)));
    claims.append(item);
  }
  li.append(claims);
}

function grab(id) {
  if (!state.socket || state.socket.readyState !== WebSocket.OPEN) {
    api("POST", "/v1/packets/" + id + "/grab", {}).then((r) => onGrabReply({ id: "grab-" + id, ok: true, grab: r }), (e) => notice(e.message));
    return;
  }
  state.socket.send(JSON.stringify({ op: "grab", id: "grab-" + id, packet: id }));
}

function onGrabReply(msg) {
  const id = Number(String(msg.id).replace("grab-", ""));
  if (msg.ok) {
    upsertPacket(id, { mine: msg.grab.amount });
    notice((msg.grab.already ? "Already grabbed 已领取 " : "You got 你抢到了 ") + yuan(msg.grab.amount));
    refreshBalance();
  } else {
    notice(msg.error.message + " (" + msg.error.error + ")");
    if (msg.error.error === "sold_out" || msg.error.error === "expired") upsertPacket(id, { status: msg.error.error });
  }
}

// ---- transfers ----

async function loadTransfer(id) {
  try { state.transfers.set(id, await api("GET", "/v1/transfers/" + id)); renderTransfers(); } catch (e) { /* retired */ }
}

const TRANSFER = {
  cooling_off: "Cooling off 冷静期", in_transit: "In transit 待到账", awaiting_acceptance: "Awaiting acceptance 待收款",
  accepted: "Accepted 已收款", declined: "Declined 已退还", recalled: "Recalled 已撤回", returned: "Returned 已退回",
  awaiting_approval: "Awaiting approval 待审批", rejected: "Rejected 已驳回",
};

function renderTransfers() {
  const list = $("#transfers");
  list.replaceChildren();
  const me = state.session.user;
  for (const t of [...state.transfers.values()].sort((a, b) => b.sent_at - a.sent_at)) {
    const li = el("li", "transfer");
    li.dataset.id = t.id;
    const dir = t.from === me ? "to 给 member " + t.to : "from 来自 member " + t.from;
    li.append(el("span", "", yuan(t.amount)), el("span", "", dir), el("span", "", t.note || ""), el("span", "state", TRANSFER[t.status.kind] || t.status.kind));
    if (t.status.kind === "in_transit") {
      const secs = Math.max(0, Math.ceil((t.arrives_at - Date.now()) / 1000));
      li.append(el("span", "", "arrives in 到账 " + Math.floor(secs / 60) + " min"));
    }
    const act = (label, cls, path) => li.append(button(label, cls, async () => {
      try { state.transfers.set(t.id, await api("POST", "/v1/transfers/" + t.id + "/" + path, {})); renderTransfers(); refreshBalance(); }
      catch (e) { notice(e.message); }
    }));
    if (t.from === me && (t.status.kind === "in_transit" || t.status.kind === "cooling_off")) act("Recall 撤回", "recall-transfer", "recall");
    if (t.to === me && t.status.kind === "awaiting_acceptance") { act("Accept 收款", "accept", "accept"); act("Decline 退还", "decline secondary", "decline"); }
    list.append(li);
  }
}

// ---- forms ----

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

function button(text, cls, onclick) {
  const b = el("button", cls, text);
  b.type = "button";
  b.onclick = onclick;
  return b;
}

function wireForms() {
  $("#send-form").onsubmit = async (ev) => {
    ev.preventDefault();
    try {
      const total = amountInput($("#send-total").value);
      const shares = Number($("#send-shares").value);
      let split = { kind: "lucky", total, shares };
      if ($("#send-kind").value === "fixed") {
        // Every share the same: the total must divide evenly, to the fen.
        if (fenOf(total) % shares !== 0) throw new Error("a fixed packet's total must divide evenly into its shares 普通红包金额需能均分");
        split = { kind: "fixed", each: amountOfFen(fenOf(total) / shares), shares };
      }
      const v = await api("POST", "/v1/packets", { id: newId(), group: state.session.group, split, greeting: $("#send-greeting").value });
      upsertPacket(v.id, { sender: v.sender, greeting: v.greeting, total: v.total, shares: v.shares, shares_left: v.shares_left,
        status: v.status.kind, until: v.status.until });
      notice(v.status.kind === "cooling_off" ? "Held by your cooling-off 冷静期中" : "Sent 已发送");
      refreshBalance();
    } catch (e) { notice(e.message); }
  };
  $("#transfer-form").onsubmit = async (ev) => {
    ev.preventDefault();
    try {
      const secs = Number($("#transfer-arrival").value);
      const t = await api("POST", "/v1/transfers", { id: newId(), to: Number($("#transfer-to").value),
        amount: amountInput($("#transfer-amount").value), arrival: secs ? { kind: "delayed", secs } : { kind: "instant" },
        note: $("#transfer-note").value });
      state.transfers.set(t.id, t);
      renderTransfers();
      refreshBalance();
    } catch (e) { notice(e.message); }
  };
  $("#cooling-form").onsubmit = async (ev) => {
    ev.preventDefault();
    $("#cooling-form").dataset.touched = "1";
    try {
      await api("PUT", "/v1/me/cooling-off", { threshold: amountInput($("#cooling-threshold").value), secs: Number($("#cooling-minutes").value) * 60 });
      notice("Cooling-off saved 冷静期已保存");
    } catch (e) { notice(e.message); }
  };
  $("#log-refresh").onclick = async () => {
    try {
      const page = await api("GET", "/v1/orgs/" + state.session.org + "/log?limit=100");
      const body = $("#log tbody");
      body.replaceChildren();
      for (const e of page.entries) {
        const tr = el("tr");
        for (const cell of [e.seq, new Date(e.at).toLocaleString(), e.actor, e.kind, e.amount ? yuan(e.amount) : "", e.reason || ""]) tr.append(el("td", "", cell));
        body.append(tr);
      }
    } catch (e) { notice(e.message); }
  };
}

function start() {
  signIn();
  if (!state.session) { $("#signin").hidden = false; return; }
  $("#who").textContent = "Member 成员 " + state.session.user + " · device " + state.session.device;
  $("#group-name").textContent = "group " + state.session.group;
  if (state.session.org) { $("#admin").hidden = false; $("#org-name").textContent = "org " + state.session.org; }
  wireForms();
  refreshBalance();
  connect();
  // Countdowns tick.
  setInterval(() => { for (const [id, p] of state.packets) if (p.status === "cooling_off") render(id); }, 1000);
}

start();
