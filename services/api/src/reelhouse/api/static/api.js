// The API client: every call is `POST /api/<module>/<method>` with the x-access-token header.
// Errors come back in the API's one shape: {success: false, error: {code, message, field, details}}.

const TOKEN_KEY = "reelhouse.token";

export const session = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  },
  set token(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  },
  onUnauthorized: () => {},
};

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

export async function call(path, body = {}, { method = "POST", signIn = false } = {}) {
  let response;
  try {
    response = await fetch(`/api/${path}`, {
      method,
      headers: { "content-type": "application/json", "x-access-token": session.token },
      body: JSON.stringify(body ?? {}),
    });
  } catch (err) {
    throw new ApiError(0, { error: { code: "UNAVAILABLE", message: `the API is not reachable (${err.message})` } });
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    if (response.status === 401 && !signIn) session.onUnauthorized();
    throw new ApiError(response.status, data);
  }
  return data;
}

// URLs an <img> or a player fetches by itself (no headers): the token rides in the query.
export function mediaUrl(path, params = {}) {
  const query = new URLSearchParams({ ...params, token: session.token });
  return `/api/${path}?${query}`;
}
