// HTTP to the service: JSON requests, server-sent events, the API key, and small DOM helpers.
export const $ = (id) => document.getElementById(id);

export function headers() {
  const h = { "content-type": "application/json" };
  const key = $("apikey").value.trim();
  if (key) h.authorization = "Bearer " + key;
  return h;
}

function failure(data, response) {
  const error = data && data.error;
  return new Error(error ? `${error.code}: ${error.message}` : `${response.status} ${response.statusText}`);
}

// `signal` (an AbortController's) drops the request: the gateway then cancels the job it started for it.
export async function api(path, body, signal) {
  const init = body === undefined ? { headers: headers(), signal } : { method: "POST", headers: headers(), body: JSON.stringify(body), signal };
  const response = await fetch(path, init);
  const data = await response.json().catch(() => null);
  if (!response.ok) throw failure(data, response);
  return data;
}

// POST with `stream: true`: yields {event, data} for each server-sent event as it arrives.
export async function* events(path, body) {
  const response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (!response.ok) throw failure(await response.json().catch(() => null), response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
  }
}

export function esc(s) {
  return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
}

// A token's text for a table cell: quoted, with newlines and tabs visible.
export function shown(text) {
  return esc(JSON.stringify(text));
}

export function setStatus(id, message, error) {
  $(id).textContent = message;
  $(id).className = "status" + (error ? " error" : "");
}

// Disable a panel's buttons while `work` runs; report its error in the panel's status line.
export async function busy(panel, statusId, work) {
  const buttons = [...document.querySelectorAll(`#${panel} button`)];
  for (const b of buttons) b.disabled = true;
  try {
    await work();
  } catch (err) {
    if (err.name === "AbortError") return;  // dropped on purpose (a cleared panel): nothing to report
    setStatus(statusId, String(err.message || err), true);
  } finally {
    for (const b of buttons) b.disabled = false;
  }
}

export function download(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
