// The Reelhouse operator dashboard: sign-in, a hash router, and one poll loop (every 3 s, as the
// seed's dashboard polls getStat) feeding every view, the sparklines and the events feed. The
// ingest servers' events and statistics come live over the events WebSocket (live.js).
import { call, readBudget, refreshSession, session, signIn, signOut as endSession } from "./api.js";
import { clearErrors, field, input, showErrors } from "./forms.js";
import { describeIngestEvent, ingestView, recordIngestStats } from "./ingest.js";
import { openLive } from "./live.js";
import { channelsView } from "./channels.js";
import { jobState, recordingsView } from "./recordings.js";
import { restreamsView } from "./restreams.js";
import { storageView } from "./storage.js";
import { streamsView } from "./streams.js";
import { feedList, systemView } from "./system.js";
import { button, h, notice } from "./ui.js";

const POLL_MS = 3000;
const BUDGET_SHARE = 0.8; // of the user's read limit per minute the poll may spend
const HISTORY_SAMPLES = 100; // 5 minutes of bitrate at one sample per poll
const FEED_SIZE = 200;

const root = document.getElementById("app");

const store = {
  recordings: [],
  recStats: new Map(),
  restreams: [],
  rsStats: new Map(),
  history: new Map(), // "recording:<id>" → kbit/s samples
  feed: [],
  tick: 0,
  seen: null, // last snapshot of states, for the events feed
  ingest: {
    stats: new Map(), // server id → its latest IngestStats (WebSocket, about once a second)
    history: new Map(), // "<server id>|<contribution>" → {kbits: [], rtt: []}
    names: new Map(), // server id → server_name, for the events feed
    socket: "connecting",
    socketWhy: "",
  },
  refresh: async () => {},
};

// -- events feed: what changed between two polls --------------------------------------------

function snapshot() {
  const seen = new Map();
  for (const job of store.recordings) {
    const [state, reason] = jobState(job);
    const files = new Map((job.recordedFiles ?? []).map((f) => [f.id, [f.file_name, f.status]]));
    seen.set(`recording:${job.id}`, { name: job.recording_name, state, reason, files });
  }
  for (const job of store.restreams) {
    const [state, reason] = jobState(job);
    const dests = new Map((store.rsStats.get(job.id)?.destinations ?? []).map((d) => [d.index, [d.target, d.state, d.message]]));
    seen.set(`restream:${job.id}`, { name: job.restream_name, state, reason, files: new Map(), dests });
  }
  return seen;
}

function emit(kind, subject, text, at = new Date()) {
  store.feed.unshift({ at, kind, subject, text });
  store.feed.length = Math.min(store.feed.length, FEED_SIZE);
}

function observe() {
  const now = snapshot();
  const before = store.seen;
  store.seen = now;
  if (!before) return;
  for (const [key, cur] of now) {
    const prev = before.get(key);
    const what = key.split(":")[0];
    if (!prev) {
      emit("created", cur.name, `${what} created (${cur.state})`);
      continue;
    }
    if (prev.state !== cur.state || prev.reason !== cur.reason) {
      emit(cur.state, cur.name, `${prev.state} → ${cur.state}${cur.reason ? `: ${cur.reason}` : ""}`);
    }
    for (const [id, [name, status]] of cur.files) {
      const old = prev.files.get(id);
      if (!old) emit("file", cur.name, `new file ${name} (${status})`);
      else if (old[1] !== status) emit("file", cur.name, `${name}: ${old[1]} → ${status}`);
    }
    for (const [id, [name]] of prev.files) if (!cur.files.has(id)) emit("file", cur.name, `${name} deleted`);
    for (const [index, [target, state, message]] of cur.dests ?? []) {
      const old = prev.dests?.get(index);
      if (old && old[1] !== state) emit(state, cur.name, `destination ${target}: ${old[1]} → ${state}${message ? `: ${message}` : ""}`);
    }
  }
  for (const [key, prev] of before) if (!now.has(key)) emit("removed", prev.name, `${key.split(":")[0]} removed`);
}

// -- polling ----------------------------------------------------------------------------------

function record(prefix, rows, stats) {
  stats.clear();
  for (const row of rows) {
    const data = row.processData;
    stats.set(data.id, row);
    const key = `${prefix}:${data.id}`;
    const samples = store.history.get(key) ?? [];
    samples.push(Number(data.bitrate_kbits) || parseFloat(data.bitrate) || 0);
    if (samples.length > HISTORY_SAMPLES) samples.shift();
    store.history.set(key, samples);
  }
}

async function pollOnce() {
  const [recs, recStats, rss, rsStats] = await Promise.all([
    call("recording/getAll", {}),
    call("recording/getStat", {}),
    call("restream/getAll", {}),
    call("restream/getStat", {}),
  ]);
  store.tick += 1;
  store.recordings = recs;
  store.restreams = rss;
  record("recording", recStats, store.recStats);
  record("restream", rsStats, store.rsStats);
  for (const [id, row] of store.recStats) store.recStats.set(id, row.processData);
  observe();
}

let timer = null;
let current = null;

// A user's reads are rate limited (REELHOUSE_RATE_LIMIT_READ, per minute by default): the next
// poll waits long enough that a cycle's reads stay within a share of the limit, and until the
// window resets when the budget is nearly spent. The bootstrap token and API keys of scripts
// are not this page's concern.
function nextPollMs(reads) {
  let wait = POLL_MS;
  if (readBudget.limit) wait = Math.max(wait, (reads * 60_000) / (readBudget.limit * BUDGET_SHARE));
  if (readBudget.remaining < 2 * reads) wait = Math.max(wait, Math.min(60_000, readBudget.reset * 1000 - Date.now() + 250));
  return wait;
}

// One poll at a time: a refresh asked for while one runs (an action's, the timer's, an event's)
// runs once more after it, instead of beside it.
let polling = null;
let pollAgain = false;
function refresh() {
  if (polling) {
    pollAgain = true;
    return polling;
  }
  polling = (async () => {
    try {
      do {
        pollAgain = false;
        await refreshOnce();
      } while (pollAgain && session.signedIn);
    } finally {
      polling = null;
    }
  })();
  return polling;
}

async function refreshOnce() {
  clearTimeout(timer);
  const before = readBudget.calls;
  try {
    await pollOnce();
    document.body.dataset.lastPoll = String(store.tick);
    if (document.querySelector(".notice-stale")) notice("");
  } catch (err) {
    if (!session.signedIn) return;
    notice(`Live data is stale: ${err.message}`, "stale");
  }
  try {
    await current?.update();
  } catch (err) {
    notice(err.message, "error");
  }
  renderFeedAside();
  if (session.signedIn) timer = setTimeout(refresh, nextPollMs(readBudget.calls - before));
}
store.refresh = refresh;
store.renderFeed = () => renderFeedAside(); // events that arrive between polls (the Channels WebSocket)

// -- layout and routing -----------------------------------------------------------------------

const VIEWS = {
  recordings: ["Recordings", recordingsView],
  restreams: ["Restreams", restreamsView],
  channels: ["Channels", channelsView],
  streams: ["Streams", streamsView],
  ingest: ["Ingest", ingestView],
  storage: ["Storage", storageView],
  system: ["System", systemView],
};
const built = new Map();
let aside = null;
let live = null; // the events WebSocket, open while signed in

function openLiveFeed() {
  if (live) return;
  live = openLive({ modules: "ingest", stats: "1" }, {
    onStats(stats) {
      recordIngestStats(store, stats);
      current?.live?.(stats.server_id);
    },
    onEvent(event) {
      if (event.module !== "ingest") return;
      emit(...describeIngestEvent(store, event));
      renderFeedAside();
    },
    onState(state, why = "") {
      store.ingest.socket = state;
      store.ingest.socketWhy = why;
      current?.socket?.(state, why);
    },
  });
}

function renderFeedAside() {
  if (aside) aside.replaceChildren(h("h3", {}, "Events"), feedList(store, { limit: 12 }));
}

function route() {
  const name = location.hash.replace(/^#\/?/, "") || "recordings";
  return VIEWS[name] ? name : "recordings";
}

function showApp() {
  const name = route();
  if (!built.has(name)) built.set(name, VIEWS[name][1](store));
  current = built.get(name);
  const nav = h("nav", {}, Object.entries(VIEWS).map(([key, [label]]) => h(
    "a", { href: `#/${key}`, class: key === name ? "active" : "", dataset: { testid: `nav-${key}` } }, label,
  )));
  aside = h("aside", { class: "feed-aside" });
  const user = session.user;
  root.replaceChildren(
    h("header", { class: "top" },
      h("h1", {}, "Reelhouse"), nav,
      h("span", { class: "who", dataset: { testid: "who", role: user.role } }, `${user.username} (${user.role})`),
      button("Sign out", signOut, { class: "link", dataset: { testid: "sign-out" } })),
    h("div", { id: "notice", class: "notice", hidden: true, role: "status" }),
    h("main", {}, current.el, aside),
  );
  openLiveFeed();
  refresh();
}

function leave() {
  clearTimeout(timer);
  live?.close();
  live = null;
  store.ingest.stats.clear();
  store.ingest.history.clear();
  for (const view of built.values()) view.destroy?.(); // the Channels view's WebSocket
  built.clear(); // views are built for one user's role
  store.seen = null;
  store.feed = [];
}

async function signOut() {
  leave();
  await endSession();
  showSignIn("Signed out.");
}

function showSignIn(message = "") {
  clearTimeout(timer);
  const username = input({ autocomplete: "username", dataset: { testid: "username" } });
  const password = input({ type: "password", autocomplete: "current-password", dataset: { testid: "password" } });
  const form = h(
    "form",
    { class: "card form sign-in", novalidate: true, dataset: { testid: "sign-in" } },
    h("h1", {}, "Reelhouse"),
    h("p", { class: "muted" }, "Sign in with your username and password (an admin creates users: ",
      h("code", {}, "/api/users/create"), ")."),
    h("div", { class: "form-error", role: "alert", dataset: { testid: "sign-in-message" } }, message),
    field("username", "Username", username),
    field("password", "Password", password),
    h("button", { type: "submit", class: "primary", dataset: { testid: "sign-in-button" } }, "Sign in"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const missing = [username, password].filter((el) => !el.value).map((el) => ({ field: el.name, message: "required" }));
    if (missing.length) return showErrors(form, missing);
    try {
      await signIn(username.value.trim(), password.value);
    } catch (err) {
      password.value = "";
      return showErrors(form, [{ field: "password", message: err.message }]);
    }
    showApp();
  });
  root.replaceChildren(form);
  username.focus();
}

session.onSignedOut = (message) => {
  leave();
  showSignIn(message);
};

window.addEventListener("hashchange", () => session.signedIn && showApp());

// A page load: the refresh cookie (if any) gives this page its access token.
async function start() {
  let alive = false;
  try {
    alive = await refreshSession();
  } catch (err) {
    return showSignIn(`The API is not reachable: ${err.message}`);
  }
  if (alive) showApp();
  else showSignIn();
}
start();
