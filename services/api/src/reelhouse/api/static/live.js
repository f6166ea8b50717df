// The live feed: one WebSocket to GET /api/events (routes/events.py) for the ingest module's
// events and its statistics (about once a second per ingest server). It resumes from the last
// event id it saw after a drop, so no event is lost across a reconnect, and it reconnects with
// the current access token (a refresh first, when the server refused the old one).
import { eventsSocketUrl, refreshSession, session } from "./api.js";

const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 10_000;

// `handlers`: onStats(stats), onEvent(payload), onState("connecting" | "live" | "down", why).
export function openLive(filter, handlers) {
  let socket = null;
  let lastId = null;
  let retry = RETRY_MIN_MS;
  let timer = null;
  let closed = false;

  function connect() {
    if (closed || !session.signedIn) return;
    handlers.onState?.("connecting");
    const params = { ...filter };
    if (lastId !== null) params.last_id = String(lastId);
    const ws = new WebSocket(eventsSocketUrl(params));
    socket = ws;
    ws.onmessage = (message) => {
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch {
        return;
      }
      if (frame.type === "connected") {
        retry = RETRY_MIN_MS;
        if (lastId === null) lastId = frame.last_id;
        handlers.onState?.("live");
      } else if (frame.type === "event") {
        lastId = frame.id;
        handlers.onEvent?.(frame.event);
      } else if (frame.type === "stats") {
        handlers.onStats?.(frame.stats);
      } else if (frame.type === "error") {
        handlers.onState?.("down", frame.message);
      }
    };
    ws.onclose = (event) => {
      if (socket !== ws) return;
      socket = null;
      if (closed) return;
      handlers.onState?.("down", event.reason || `closed (${event.code})`);
      const wait = retry;
      retry = Math.min(RETRY_MAX_MS, retry * 2);
      timer = setTimeout(async () => {
        if (event.code === 4401) {
          try {
            await refreshSession();
          } catch {
            // the API is away: the next attempt tries again
          }
        }
        connect();
      }, wait);
    };
  }

  connect();
  return {
    close() {
      closed = true;
      clearTimeout(timer);
      socket?.close(1000, "signed out");
      socket = null;
    },
  };
}
