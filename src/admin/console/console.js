// dispatchbox console: a page over the admin API (/api). No framework, no build step.
//
// Safety rules kept throughout:
// - every value that comes from the database or the API is put on the page as text
//   (textContent / text nodes via el()); nothing is ever assigned to innerHTML;
// - the admin token is read from the URL fragment (#token=…, which browsers never send to
//   the server) or the login form, kept in sessionStorage (this tab only), removed from the
//   address bar at once, and sent only as an Authorization bearer header;
// - a 401 forgets the token and asks again.
"use strict";

const TOKEN_KEY = "dispatchbox.token";
const REFRESH_MS = 10000;
const FOLLOW_MS = 1000;
const FOLLOW_LIMIT_MS = 120000;
const PAGE_SIZE = 25;
const PREVIEW_SIZE = 25;

const $ = (id) => document.getElementById(id);

/** An element with attributes and children; strings become text nodes, never markup. */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "class") node.className = value;
    else if (name === "onclick") node.addEventListener("click", value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function setText(node, text) {
  node.textContent = text === null || text === undefined ? "" : String(text);
}

function formatTime(text) {
  if (!text) return "—";
  const date = new Date(text);
  if (Number.isNaN(date.getTime())) return String(text);
  return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

// ---------------------------------------------------------------------------------------
// Token and API calls

function takeTokenFromFragment() {
  const hash = window.location.hash.replace(/^#/, "");
  if (!hash) return;
  // Split by hand rather than with URLSearchParams, which would turn a `+` of a base64
  // token into a space.
  const rest = [];
  for (const part of hash.split("&")) {
    if (part.startsWith("token=")) {
      const raw = part.slice("token=".length);
      let value = raw;
      try {
        value = decodeURIComponent(raw);
      } catch (_) {
        // Not percent-encoded after all: take it as written.
      }
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
    } else if (part) {
      rest.push(part);
    }
  }
  // Take the token out of the address bar (and the history entry) at once.
  const fragment = rest.length ? `#${rest.join("&")}` : "";
  history.replaceState(null, "", window.location.pathname + window.location.search + fragment);
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Calls the admin API; throws ApiError with the API's own error text. */
async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token() || ""}` };
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(`/api${path}`, init);
  } catch (error) {
    throw new ApiError(0, `the relay did not answer (${error.message})`);
  }
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (response.status === 401 || response.status === 403) {
    const reason = (data && data.error) || `HTTP ${response.status}`;
    signOut(`The token was refused: ${reason}`);
    throw new ApiError(response.status, reason);
  }
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.error) || `HTTP ${response.status}`);
  }
  return data;
}

// ---------------------------------------------------------------------------------------
// Sign in and out

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  $("app").hidden = true;
  $("sign-out").hidden = true;
  $("login").hidden = false;
  setText($("login-error"), message || "");
  $("token").value = "";
  $("token").focus();
}

async function signIn() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;
  try {
    await refreshAll();
  } catch (error) {
    if (!(error instanceof ApiError) || (error.status !== 401 && error.status !== 403)) {
      showBanner(error.message);
    }
  }
}

function showBanner(message) {
  const banner = $("banner");
  setText(banner, message ? `Could not refresh: ${message}` : "");
  banner.hidden = !message;
}

// ---------------------------------------------------------------------------------------
// Overview: relay state, counts, dead-letter causes

function fact(list, term, value, cls) {
  list.append(el("dt", {}, term), el("dd", cls ? { class: cls } : {}, value));
}

function renderOverview(overview) {
  const state = $("relay-state");
  state.replaceChildren();
  const relay = overview.relay || {};
  const slot = overview.slot || {};
  fact(state, "Stream", relay.stream || "unknown",
    relay.stream_connected ? "status-up" : relay.role === "standby" ? "status-warn" : "status-down");
  fact(state, "Role", relay.role === "leader" ? "leader (holds the slot)"
    : relay.role === "standby" ? "standby (another relay holds the slot)" : "unknown");
  fact(state, "Replication lag", typeof relay.lag_seconds === "number"
    ? `${relay.lag_seconds.toFixed(1)} s` : "unknown");
  let slotText = slot.name || "";
  if (slot.error) slotText += ` (cannot be read: ${slot.error})`;
  else if (slot.exists === false) slotText += " (missing)";
  else {
    slotText += slot.active ? " (active" : " (inactive";
    if (slot.wal_status) slotText += `, WAL ${slot.wal_status}`;
    if (typeof slot.lag_bytes === "number") slotText += `, ${slot.lag_bytes} bytes unconfirmed`;
    slotText += ")";
  }
  fact(state, "Slot", slotText);
  const sinks = relay.sinks || {};
  for (const [name, health] of Object.entries(sinks)) {
    const text = health.up === true ? "up" : health.up === false ? `down: ${health.error || ""}` : "not checked yet";
    fact(state, `Sink ${name}`, text, health.up === true ? "status-up" : health.up === false ? "status-down" : "");
  }
  for (const problem of relay.problems || []) fact(state, "Problem", problem, "status-down");
  if (relay.shutting_down) fact(state, "Shutdown", "in progress", "status-warn");

  const counts = overview.counts || {};
  const list = $("counts");
  list.replaceChildren();
  const items = [
    ["pending", "Pending", counts.pending],
    ["retry", "Retry", counts.retry],
    ["processing", "Processing", counts.processing],
    ["dead", "Dead", counts.dead],
    ["done", "Done", !counts.done_more ? counts.done
      : typeof counts.done_estimate === "number" ? `≈ ${counts.done_estimate}` : `> ${counts.done}`],
  ];
  for (const [key, label, value] of items) {
    list.append(el("li", { class: key, "data-status": key },
      el("span", { class: "n" }, value === undefined ? "—" : value), label));
  }
}

function renderStats(stats) {
  const total = stats.total || 0;
  const filtered = Object.keys(list.filter).length > 0;
  let summary = filtered
    ? `${plural(total, "dead event matches", "dead events match")} the filter`
    : plural(total, "dead event", "dead events");
  if (stats.oldest_failed_at) {
    summary += `, failed between ${formatTime(stats.oldest_failed_at)} and ${formatTime(stats.newest_failed_at)}`;
  }
  setText($("dead-summary"), summary + ".");
  const shown = (stats.by_last_error || []).reduce((sum, g) => sum + g.count, 0);
  fillGroups($("by-error"), stats.by_last_error || [], "error", total - shown);
  fillGroups($("by-type"), stats.by_event_type || [], "event_type", 0);
}

function fillGroups(table, groups, field, others) {
  const body = table.tBodies[0];
  body.replaceChildren();
  if (groups.length === 0) {
    body.append(el("tr", {}, el("td", { colspan: 2 }, "No dead events.")));
    return;
  }
  for (const group of groups) {
    const name = group.name === "" ? "(no error recorded)" : group.name;
    const button = el("button", {
      type: "button", class: "link",
      title: field === "error" ? "Show the dead events with this error" : "Show the dead events of this type",
    }, name);
    button.addEventListener("click", () => {
      $("filter").reset();
      if (field === "error") $("f-error").value = group.name;
      else $("f-event").value = group.name;
      applyFilter();
      $("list-title").scrollIntoView();
    });
    body.append(el("tr", {}, el("td", { class: "err" }, button), el("td", { class: "num" }, group.count)));
  }
  if (others > 0) {
    body.append(el("tr", {}, el("td", { class: "muted" }, "other causes"), el("td", { class: "num" }, others)));
  }
}

// ---------------------------------------------------------------------------------------
// Dead event list

const list = {
  filter: {},
  pages: [null], // after_id of each page seen, for Previous
  page: 0,
  next: null,
  selected: new Set(),
};

function readFilter() {
  const filter = {};
  for (const input of $("filter").querySelectorAll("input")) {
    const value = input.value.trim();
    if (value) filter[input.name] = value;
  }
  return filter;
}

function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") search.set(name, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

async function applyFilter() {
  list.filter = readFilter();
  list.pages = [null];
  list.page = 0;
  list.selected.clear();
  await refreshList();
  await refreshStats();
}

async function refreshStats() {
  renderStats(await api("GET", `/dead-events/stats${query(list.filter)}`));
}

async function refreshList() {
  const afterId = list.pages[list.page];
  const page = await api("GET", `/dead-events${query({ ...list.filter, limit: PAGE_SIZE, after_id: afterId })}`);
  list.next = page.next_after_id;
  const body = $("dead-list").tBodies[0];
  body.replaceChildren();
  if (page.events.length === 0) {
    body.append(el("tr", {}, el("td", { colspan: 8 }, "No dead events match.")));
  }
  for (const event of page.events) {
    const box = el("input", { type: "checkbox", "aria-label": `Select event ${event.id}` });
    box.checked = list.selected.has(event.id);
    box.addEventListener("change", () => {
      if (box.checked) list.selected.add(event.id);
      else list.selected.delete(event.id);
      updateSelection();
    });
    const details = detailsButton(event.id);
    const error = event.unreadable ? `unreadable: ${event.unreadable}` : event.last_error || "";
    body.append(el("tr", { "data-id": event.id },
      el("td", {}, box),
      el("td", { class: "num" }, event.id),
      el("td", { class: "event-type" }, event.event_type),
      el("td", {}, `${event.aggregate_type}/${event.aggregate_id}`),
      el("td", { class: "num" }, event.attempts),
      el("td", { class: "err" }, error),
      el("td", {}, formatTime(event.last_error_at || event.created_at)),
      el("td", {}, details)));
  }
  const filtered = Object.keys(list.filter).length > 0;
  setText($("list-caption"), `Dead events${filtered ? " matching the filter" : ""}, page ${list.page + 1}`);
  setText($("page-info"), `Page ${list.page + 1}${list.next ? "" : " (last)"}`);
  $("prev-page").disabled = list.page === 0;
  $("first-page").disabled = list.page === 0;
  $("next-page").disabled = !list.next;
  $("select-page").checked = false;
  updateSelection();
}

/** The "Details" button of an event's row: opens its dialog, and focus returns to it. */
function detailsButton(id) {
  const button = el("button", { type: "button", class: "secondary", "aria-label": `Details of event ${id}` }, "Details");
  button.addEventListener("click", guard(() => showEvent(id, button)));
  return button;
}

function updateSelection() {
  const n = list.selected.size;
  setText($("retry-selected"), `Retry selected (${n})`);
  $("retry-selected").disabled = n === 0;
}

// ---------------------------------------------------------------------------------------
// Confirmation, retries and replays

/** Shows the confirmation dialog; resolves true on Confirm. */
function confirmAction(title, text, confirmLabel) {
  const dialog = $("confirm");
  setText($("confirm-title"), title);
  setText($("confirm-text"), text);
  setText($("confirm-yes"), confirmLabel);
  return new Promise((resolve) => {
    const done = (answer) => {
      $("confirm-yes").removeEventListener("click", yes);
      $("confirm-no").removeEventListener("click", no);
      dialog.removeEventListener("cancel", no);
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    const yes = () => done(true);
    const no = () => done(false);
    $("confirm-yes").addEventListener("click", yes);
    $("confirm-no").addEventListener("click", no);
    dialog.addEventListener("cancel", no);
    dialog.showModal();
    $("confirm-no").focus();
  });
}

/** Writes `text` into the result area `out`, with `state` for tests and styles. */
function report(out, state, text) {
  out.dataset.state = state;
  setText(out, text);
}

/** Follows `ids` until none is pending, processing or retry any more (or a time limit),
 *  writing the counts per status into `out`. */
async function follow(ids, verb, out) {
  const started = Date.now();
  for (;;) {
    let counts;
    try {
      counts = (await api("POST", "/events/statuses", { ids })).by_status;
    } catch (error) {
      report(out, "error", `${verb} ${plural(ids.length, "event", "events")}; cannot follow them: ${error.message}`);
      return;
    }
    const parts = Object.entries(counts).map(([status, n]) => `${n} ${status}`);
    const open = (counts.pending || 0) + (counts.processing || 0) + (counts.retry || 0);
    const gaveUp = open > 0 && Date.now() - started > FOLLOW_LIMIT_MS;
    const state = open === 0 ? "finished" : gaveUp ? "stopped following" : "delivering";
    report(out, state, `${verb} ${plural(ids.length, "event", "events")}: ${parts.join(", ") || "none left"} (${state}).`);
    if (open === 0 || gaveUp) {
      refreshAll().catch(() => {});
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, FOLLOW_MS));
  }
}

/**
 * The one way the console changes rows: a dry run first, its count in a confirmation,
 * then the change, then the changed events followed until delivered.
 *   action.call(dryRun)  → the API's answer
 *   action.count(answer) → how many events the dry run matched (or a string: why none)
 *   action.ids(answer)   → the ids the real call changed
 *   action.title / button / verb / noun / what → the words shown
 */
async function confirmThenRun(action, describe, out) {
  report(out, "counting", "Counting (dry run)…");
  let count;
  try {
    count = action.count(await action.call(true));
  } catch (error) {
    report(out, "error", `Nothing ${action.verb.toLowerCase()}: ${error.message}`);
    return;
  }
  if (typeof count === "string") {
    report(out, "empty", count);
    return;
  }
  const ok = await confirmAction(action.title,
    `${plural(count, action.noun, `${action.noun}s`)} (${describe}) ${action.what}`,
    `${action.button} ${plural(count, "event", "events")}`);
  if (!ok) {
    report(out, "cancelled", `${action.button} cancelled; nothing changed.`);
    return;
  }
  try {
    const ids = action.ids(await action.call(false));
    report(out, "delivering", `${action.verb} ${plural(ids.length, "event", "events")}: now pending.`);
    refreshList().catch(() => {});
    if (ids.length > 0) await follow(ids, action.verb, out);
    else report(out, "finished", `${action.verb} no events: they changed meanwhile.`);
  } catch (error) {
    report(out, "error", `${action.button} failed: ${error.message}`);
  }
}

function retry(selection, describe, out) {
  return confirmThenRun({
    title: "Retry dead events",
    button: "Retry",
    verb: "Retried",
    noun: "dead event",
    what: "will return to pending and be delivered again by the sweeper.",
    call: (dryRun) => api("POST", "/dead-events/retry", { ...selection, dry_run: dryRun }),
    count: (answer) => answer.retried.length || "No dead events match: nothing to retry.",
    ids: (answer) => {
      list.selected.clear();
      return answer.retried;
    },
  }, describe, out);
}

function replay(filter, describe, out) {
  return confirmThenRun({
    title: "Replay delivered events",
    button: "Replay",
    verb: "Replayed",
    noun: "delivered event",
    what: "will return to pending and be delivered again, in id order.",
    call: (dryRun) => api("POST", "/replay", { ...filter, dry_run: dryRun }),
    count: (answer) => {
      if (answer.over_cap) {
        throw new ApiError(409, `more than ${filter.max || 10000} delivered events match; narrow the selection or raise "At most"`);
      }
      return answer.matched || "No delivered (done) events match: nothing to replay.";
    },
    ids: (answer) => {
      if (answer.over_cap) throw new ApiError(409, "more events matched than the cap by now; nothing was replayed");
      return answer.replayed;
    },
  }, describe, out);
}

/** The replay form's filter (the API's field names); throws on a malformed number. */
function readReplayFilter() {
  const form = $("replay");
  const filter = {};
  for (const name of ["from_id", "to_id", "max"]) {
    const value = numberField(form, name);
    if (value !== undefined) filter[name] = value;
  }
  for (const name of ["since", "until", "aggregate_type", "aggregate_id", "event_type"]) {
    const value = form.elements[name].value.trim();
    if (value) filter[name] = value;
  }
  return filter;
}

let replayFilter = {};

/** The replay list view: how many delivered events the filter matches, and the first ones. */
async function previewReplay(filter) {
  const out = $("replay-result");
  report(out, "counting", "Counting (dry run)…");
  let answer;
  try {
    answer = await api("POST", "/replay", { ...filter, dry_run: true, preview: PREVIEW_SIZE });
  } catch (error) {
    report(out, "error", `Nothing to preview: ${error.message}`);
    return;
  }
  report(out, "", "");
  const cap = filter.max || 10000;
  setText($("replay-count"), answer.over_cap
    ? `More than ${cap} delivered events match: narrow the filter or raise "At most" to replay them.`
    : `${plural(answer.matched, "delivered event matches", "delivered events match")}${answer.matched > PREVIEW_SIZE ? `; the first ${PREVIEW_SIZE} are listed` : ""}.`);
  const body = $("replay-list").tBodies[0];
  body.replaceChildren();
  for (const event of answer.events || []) {
    const details = detailsButton(event.id);
    body.append(el("tr", { "data-id": event.id },
      el("td", { class: "num" }, event.id),
      el("td", { class: "event-type" }, event.event_type),
      el("td", {}, `${event.aggregate_type}/${event.aggregate_id}`),
      el("td", {}, formatTime(event.created_at)),
      el("td", { class: "err" }, event.last_error || ""),
      el("td", {}, details)));
  }
  if (!answer.events || answer.events.length === 0) {
    body.append(el("tr", {}, el("td", { colspan: 6 }, "No delivered (done) events match.")));
  }
  $("replay-run").disabled = answer.over_cap || answer.matched === 0;
  setText($("replay-run"), `Replay ${answer.over_cap ? "every match" : plural(answer.matched, "event", "events")}…`);
  $("replay-preview").hidden = false;
}

function describeFilter(filter) {
  const parts = Object.entries(filter).map(([name, value]) => `${name.replace("_", " ")} ${JSON.stringify(value)}`);
  return parts.length ? parts.join(", ") : "every dead event";
}

// ---------------------------------------------------------------------------------------
// Event detail

let detailReturnFocus = null;

function pretty(value) {
  if (value === null || value === undefined) return "null";
  return JSON.stringify(value, null, 2);
}

async function showEvent(id, returnFocus) {
  const event = await api("GET", `/events/${encodeURIComponent(id)}`);
  detailReturnFocus = returnFocus || null;
  setText($("detail-title"), `Event ${event.id}`);
  const facts = $("detail-facts");
  facts.replaceChildren();
  fact(facts, "Status", event.status);
  fact(facts, "Event type", event.event_type);
  fact(facts, "Aggregate", `${event.aggregate_type}/${event.aggregate_id}`);
  fact(facts, "Attempts", event.attempts);
  fact(facts, "Created", formatTime(event.created_at));
  fact(facts, "Last error at", formatTime(event.last_error_at));
  if (event.next_run_at && event.status !== "done" && event.status !== "dead") {
    fact(facts, "Next attempt", formatTime(event.next_run_at));
  }
  if (event.unreadable) fact(facts, "Unreadable", event.unreadable, "status-down");
  setText($("detail-error"), event.last_error || "none");
  setText($("detail-payload"), pretty(event.payload));
  setText($("detail-headers"), pretty(event.headers));
  setText($("detail-result"), "");
  $("detail-retry").hidden = event.status !== "dead";
  $("detail-replay").hidden = event.status !== "done";
  $("detail-retry").onclick = () => retry({ ids: [event.id] }, `event ${event.id}`, $("detail-result"));
  $("detail-replay").onclick = () => replay({ from_id: event.id, to_id: event.id }, `event ${event.id}`, $("detail-result"));
  const dialog = $("detail");
  if (!dialog.open) dialog.showModal();
  $("detail-close").focus();
}

// ---------------------------------------------------------------------------------------
// Refresh

let refreshing = false;

async function refreshOverview() {
  renderOverview(await api("GET", "/overview"));
}

async function refreshAll() {
  if (refreshing || !token()) return;
  refreshing = true;
  try {
    await Promise.all([refreshOverview(), refreshStats(), refreshList()]);
    showBanner("");
    setText($("refreshed"), `Updated ${new Date().toLocaleTimeString()}`);
  } finally {
    refreshing = false;
  }
}

/** The automatic refresh: counts, state and causes (not the list, so a selection or the
 *  page being read does not move under the reader). */
async function autoRefresh() {
  if (!$("auto-refresh").checked || !token() || document.hidden) return;
  try {
    await Promise.all([refreshOverview(), refreshStats()]);
    showBanner("");
    setText($("refreshed"), `Updated ${new Date().toLocaleTimeString()}`);
  } catch (error) {
    if (error.status !== 401 && error.status !== 403) showBanner(error.message);
  }
}

// ---------------------------------------------------------------------------------------
// Wiring

function guard(action) {
  return (event) => {
    if (event) event.preventDefault();
    Promise.resolve()
      .then(action)
      .catch((error) => {
        if (error.status !== 401 && error.status !== 403) showBanner(error.message);
      });
  };
}

function numberField(form, name) {
  const value = form.elements[name].value.trim();
  if (!value) return undefined;
  if (!/^[0-9]+$/.test(value)) throw new ApiError(400, `${name.replace("_", " ")}: ${JSON.stringify(value)} is not a whole number`);
  return Number(value);
}

document.addEventListener("DOMContentLoaded", () => {
  takeTokenFromFragment();

  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    signIn();
  });
  $("sign-out").addEventListener("click", () => signOut("Token forgotten."));
  $("refresh").addEventListener("click", guard(refreshAll));
  $("filter").addEventListener("submit", guard(applyFilter));
  $("clear-filter").addEventListener("click", guard(() => {
    $("filter").reset();
    return applyFilter();
  }));
  $("next-page").addEventListener("click", guard(() => {
    if (!list.next) return undefined;
    list.page += 1;
    list.pages[list.page] = list.next;
    return refreshList();
  }));
  $("prev-page").addEventListener("click", guard(() => {
    if (list.page === 0) return undefined;
    list.page -= 1;
    return refreshList();
  }));
  $("first-page").addEventListener("click", guard(() => {
    list.page = 0;
    return refreshList();
  }));
  $("select-page").addEventListener("change", () => {
    const checked = $("select-page").checked;
    for (const box of $("dead-list").tBodies[0].querySelectorAll("input[type=checkbox]")) {
      box.checked = checked;
      box.dispatchEvent(new Event("change"));
    }
  });
  $("retry-selected").addEventListener("click", guard(() => {
    const ids = [...list.selected].sort((a, b) => a - b);
    return retry({ ids }, `${plural(ids.length, "selected event", "selected events")}`, $("retry-result"));
  }));
  $("retry-matching").addEventListener("click", guard(() => {
    const filter = readFilter();
    const selection = Object.keys(filter).length ? { filter } : { all: true };
    return retry(selection, describeFilter(filter), $("retry-result"));
  }));
  $("lookup").addEventListener("submit", guard(async () => {
    setText($("lookup-error"), "");
    const id = $("lookup-id").value.trim();
    try {
      await showEvent(id, $("lookup-id"));
    } catch (error) {
      setText($("lookup-error"), error.message);
    }
  }));
  $("replay").addEventListener("submit", guard(() => {
    $("replay-preview").hidden = true;
    setText($("replay-result"), "");
    try {
      replayFilter = readReplayFilter();
    } catch (error) {
      report($("replay-result"), "error", error.message);
      return undefined;
    }
    return previewReplay(replayFilter);
  }));
  $("replay-run").addEventListener("click", guard(() => {
    const { max, ...shown } = replayFilter;
    return replay(replayFilter, describeFilter(shown), $("replay-result"));
  }));
  $("detail-close").addEventListener("click", () => $("detail").close());
  $("detail").addEventListener("close", () => {
    if (detailReturnFocus) detailReturnFocus.focus();
  });

  setInterval(autoRefresh, REFRESH_MS);
  if (token()) signIn();
  else signOut("");
});
