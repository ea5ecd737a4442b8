// Send analytics events to quartet from a web page: plain `fetch` and the Connect protocol's
// JSON mapping, no dependency. See docs/http.md ("Browser snippet").
//
//   import { createEventSender } from "./quartet-events.mjs";
//   const events = createEventSender({ baseUrl: "https://quartet.example.com:8080", key: "qk_..." });
//   events.send("page interaction", "pageview", { host: location.host, path: location.pathname });
//
// Events are batched (one SendEvents call per `delayMs`, or as soon as `maxBatch` are queued)
// and each gets its id here, so a retried batch is stored once. When the page is hidden or
// closed (`visibilitychange`, `pagehide`), the queue is sent with `fetch(..., {keepalive: true})`,
// which the browser completes after the page is gone. (Not `navigator.sendBeacon`: it cannot set
// the `authorization` header nor the JSON content type, so the server would need the key in the
// URL.)

const SEND_EVENTS = "/quartet.events.v1.EventService/SendEvents";
// Browsers refuse keepalive requests whose bodies add up to more than 64 KiB in flight.
const KEEPALIVE_MAX_BYTES = 60 * 1024;

export function createEventSender({ baseUrl, key, sessionId = crypto.randomUUID(), delayMs = 1000, maxBatch = 100, onResult = () => {} }) {
  let queue = [];
  let timer = null;

  function send(category, name, data = {}, occurTime = new Date()) {
    queue.push({
      id: crypto.randomUUID(),
      sessionId,
      category,
      name,
      data,
      occurTime: occurTime.toISOString(),
    });
    if (queue.length >= maxBatch) {
      flush();
    } else if (timer === null) {
      timer = setTimeout(flush, delayMs);
    }
  }

  // Send what is queued; resolves to the SendEvents reply (or rejects with the Connect error).
  function flush({ keepalive = false } = {}) {
    clearTimeout(timer);
    timer = null;
    if (queue.length === 0) {
      return Promise.resolve(null);
    }
    const events = queue;
    queue = [];
    const body = JSON.stringify({ events });
    const sent = fetch(baseUrl + SEND_EVENTS, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "connect-protocol-version": "1",
        authorization: `Bearer ${key}`,
      },
      body,
      keepalive: keepalive && body.length <= KEEPALIVE_MAX_BYTES,
    }).then(async (response) => {
      const reply = await response.json();
      if (!response.ok) {
        // A Connect error: {code, message, details}. Requeue what may succeed later.
        if (["unavailable", "resource_exhausted", "deadline_exceeded"].includes(reply.code)) {
          queue = events.concat(queue);
        }
        throw Object.assign(new Error(reply.message), reply);
      }
      onResult(reply);
      return reply;
    });
    sent.catch(() => {}); // reported to whoever awaits flush(); never an unhandled rejection
    return sent;
  }

  function leaving() {
    flush({ keepalive: true });
  }
  addEventListener("pagehide", leaving);
  addEventListener("visibilitychange", () => {
    if (document.visibilityState === "hidden") {
      leaving();
    }
  });

  return { send, flush, sessionId };
}
