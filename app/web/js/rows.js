// Full-row export of the shown record (GET /v1/records/{id}/logprobs): every position's whole next-token
// distribution as float32 log-probabilities in a safetensors file, downloaded only when the user asks. The button
// says what the file holds and how large it is before anything is fetched.
import { $, download, headers, setStatus } from "./api.js";

const FLOAT_BYTES = 4;
const state = { recordId: null, positions: 0, upgrade: false, asked: 0 };

function megabytes(bytes) {
  return bytes >= 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${(bytes / 1e3).toFixed(0)} kB`;
}

export function hideRows() {
  state.asked += 1;
  state.recordId = null;
  $("export-rows").hidden = true;
  $("rows-note").textContent = "";
}

// Offer the record's full rows: positions 1 .. T - 1 (position 0 has no prediction), V floats each.
export async function offerRows(recordId) {
  const asked = ++state.asked;
  const response = await fetch(`/v1/records/${encodeURIComponent(recordId)}?top_logprobs=0`, { headers: headers() });
  if (!response.ok || asked !== state.asked) return;
  const meta = await response.json();
  state.recordId = recordId;
  state.positions = meta.n_tokens - 1;
  state.upgrade = meta.retain !== "full";
  if (state.positions < 1) return;
  const size = state.positions * meta.vocab_size * FLOAT_BYTES;
  $("export-rows").hidden = false;
  $("export-rows").dataset.bytes = String(size);
  $("rows-note").textContent = `full rows: ${state.positions} positions × ${meta.vocab_size} log-probabilities (float32, ` +
    `safetensors), about ${megabytes(size)}${state.upgrade ? "; the record keeps statistics only, so it is re-scored first" : ""}`;
}

async function downloadRows() {
  const recordId = state.recordId;
  if (!recordId) return;
  setStatus("status", `downloading the full rows of record ${recordId}…`);
  const query = `start=1&stop=${state.positions + 1}${state.upgrade ? "&upgrade=true" : ""}`;
  const response = await fetch(`/v1/records/${encodeURIComponent(recordId)}/logprobs?${query}`, { headers: headers() });
  if (!response.ok) {
    const error = (await response.json().catch(() => null))?.error;
    setStatus("status", error ? `full rows: ${error.code}: ${error.message}` : `full rows: ${response.status}`, true);
    return;
  }
  const blob = await response.blob();
  download(`${recordId}.logprobs.safetensors`, "application/octet-stream", blob);
  setStatus("status", `downloaded the full rows of record ${recordId} (${megabytes(blob.size)})`);
}

export function initRows() {
  $("export-rows").addEventListener("click", downloadRows);
  hideRows();
}
