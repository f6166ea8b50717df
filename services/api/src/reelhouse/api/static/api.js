// The API client: every call is `POST /api/<module>/<method>` with the x-access-token header.
// Errors come back in the API's one shape: {success: false, error: {code, message, field, details}}.
//
// The session (docs/SECURITY.md, "Dashboard sessions"): the access token lives in this module's
// memory only and is lost with the page; the refresh token is an HttpOnly cookie the page never
// sees (Path=/api/auth/session, SameSite=Strict). A page load trades the cookie for an access
// token; the token is refreshed before it expires and once on a 401. Nothing is written to
// localStorage or sessionStorage.

const SESSION = "/api/auth/session";
const ROLES = ["viewer", "operator", "admin"];
const JSON_HEADERS = { "content-type": "application/json" };

let accessToken = "";
let refreshTimer = null;
let refreshing = null; // the refresh under way in this tab: concurrent 401s share it

export const session = {
  user: null, // {id, username, role, tenant} from the login or refresh answer
  onSignedOut: () => {}, // (message) the session ended: show the sign-in form
  get signedIn() {
    return Boolean(accessToken);
  },
  // May the signed-in user do what needs `role`? (viewer < operator < admin)
  can(role) {
    return Boolean(session.user) && ROLES.indexOf(session.user.role) >= ROLES.indexOf(role);
  },
};

// The read budget of the last counted read (X-RateLimit-*): the poll loop spaces itself by it.
export const readBudget = { limit: 0, remaining: Infinity, reset: 0, calls: 0 };

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "INTERNAL_ERROR";
    this.field = error.field || null;
    // Validation errors list every field: [{field: "input.input_stream_url", message}].
    this.details = error.details || (error.field ? [{ field: error.field, message: this.message }] : []);
  }
}

function unreachable(err) {
  return new ApiError(0, { error: { code: "UNAVAILABLE", message: `the API is not reachable (${err.message})` } });
}

async function json(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

// -- the session ------------------------------------------------------------------------------

function adopt(answer) {
  accessToken = answer.access_token;
  session.user = answer.user;
  clearTimeout(refreshTimer);
  // Refresh a minute before expiry (a quarter of the lifetime when that is shorter).
  const lead = Math.min(60, answer.expires_in / 4);
  refreshTimer = setTimeout(scheduledRefresh, Math.max(1, answer.expires_in - lead) * 1000);
}

function forget() {
  accessToken = "";
  session.user = null;
  clearTimeout(refreshTimer);
}

function end(message) {
  if (!session.user) return; // ended already (several requests saw the same 401)
  forget();
  session.onSignedOut(message);
}

async function scheduledRefresh() {
  try {
    if (!(await refreshSession())) end("Your session ended; sign in again.");
  } catch {
    refreshTimer = setTimeout(scheduledRefresh, 10_000); // the API is away: try again soon
  }
}

// Tabs of this origin take turns with the cookie (Web Locks, where the page is a secure context:
// https or loopback), so two tabs never present the same one: a second use of a refresh token is
// taken as theft and revokes the whole session.
function exclusive(fn) {
  return navigator.locks ? navigator.locks.request("reelhouse-session", fn) : fn();
}

async function sessionPost(name, body = {}) {
  const response = await fetch(`${SESSION}/${name}`, {
    method: "POST",
    headers: JSON_HEADERS,
    body: JSON.stringify(body),
    credentials: "same-origin",
  });
  return [response, await json(response)];
}

// Sign in with a username and password; throws an ApiError (401: wrong username or password).
export async function signIn(username, password) {
  let response;
  let data;
  try {
    [response, data] = await exclusive(() => sessionPost("login", { username, password }));
  } catch (err) {
    throw unreachable(err);
  }
  if (!response.ok) throw new ApiError(response.status, data);
  adopt(data);
}

// Trade the refresh cookie for a new access token (and a new cookie): true when the session
// lives on, false when there is none (never signed in, signed out, revoked, expired).
export function refreshSession() {
  refreshing ??= exclusive(async () => {
    const [response, data] = await sessionPost("refresh");
    if (response.ok) {
      adopt(data);
      return true;
    }
    if (response.status === 401) return false; // the server cleared the cookie
    throw new ApiError(response.status, data);
  }).finally(() => {
    refreshing = null;
  });
  return refreshing;
}

// Sign out: the server revokes the session (its refresh chain and the user's access tokens) and
// clears the cookie.
export async function signOut() {
  forget();
  try {
    await exclusive(() => sessionPost("logout"));
  } catch {
    // not reachable: the cookie stays until the next sign-out or its expiry
  }
}

// A request with the access token; on a 401 the token is refreshed once and the request sent
// again. A second 401 (or no session to refresh) ends the session.
async function authorized(send) {
  const sent = accessToken;
  let response = await send(sent);
  if (response.status !== 401) return response;
  let alive = accessToken !== sent; // another request refreshed meanwhile
  if (!alive) {
    try {
      alive = await refreshSession();
    } catch {
      return response;
    }
  }
  if (!alive) {
    end("Your session ended; sign in again.");
    return response;
  }
  response = await send(accessToken);
  if (response.status === 401) end("Your access was refused; sign in again.");
  return response;
}

function countRead(path, method, response) {
  const name = path.split("?")[0].split("/").pop();
  if (method !== "GET" && !name.startsWith("get")) return;
  readBudget.calls += 1;
  const limit = Number(response.headers.get("x-ratelimit-limit"));
  if (!limit) return;
  readBudget.limit = limit;
  readBudget.remaining = Number(response.headers.get("x-ratelimit-remaining"));
  readBudget.reset = Number(response.headers.get("x-ratelimit-reset"));
}

export async function call(path, body = {}, { method = "POST" } = {}) {
  let response;
  try {
    response = await authorized((token) => fetch(`/api/${path}`, {
      method,
      headers: { ...JSON_HEADERS, "x-access-token": token },
      body: method === "GET" ? undefined : JSON.stringify(body ?? {}), // a GET has no body
    }));
  } catch (err) {
    throw unreachable(err);
  }
  countRead(path, method, response);
  const data = await json(response);
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// -- media ------------------------------------------------------------------------------------

// A picture fetched with the access token in a header, as an object URL for an <img> (the
// caller revokes the previous one). No credential ever goes into a URL.
export async function mediaBlobUrl(path, params = {}) {
  const url = `/api/${path}?${new URLSearchParams(params)}`;
  const response = await authorized((token) => fetch(url, { headers: { "x-access-token": token } }));
  countRead(path, "GET", response);
  if (!response.ok) throw new ApiError(response.status, await json(response));
  return URL.createObjectURL(await response.blob());
}

// hls.js sends the access token current at each request (playlist and segments) in a header.
export function hlsConfig() {
  return {
    xhrSetup(xhr, url) {
      xhr.open("GET", url, true);
      xhr.setRequestHeader("x-access-token", accessToken);
    },
  };
}

// Only for a player that cannot send headers (Safari's native HLS): the access JWT in the query,
// valid until it expires (REELHOUSE_ACCESS_TOKEN_TTL_S) or the session ends.
export function mediaUrl(path, params = {}) {
  return `/api/${path}?${new URLSearchParams({ ...params, token: accessToken })}`;
}

// -- the events WebSocket ---------------------------------------------------------------------

// The URL of GET /api/events for a WebSocket (browsers cannot set headers on one, so the access
// token goes in the query, as the API documents; the API keeps no access log). A socket opened
// with it lives on after the token expires; the page reconnects with the current token when the
// server closes it.
export function eventsSocketUrl(params = {}) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/api/events?${new URLSearchParams({ ...params, token: accessToken })}`;
}
