// Shared by the chat page (app.js) and the arena page (arena.js); loaded before them.
// Model output only ever goes into the page through textContent (never innerHTML).
"use strict";

const $ = (id) => document.getElementById(id);

function setStatus(text) { $("status").textContent = text; }

// JSON headers, with the API key from the page's key field when one is typed.
function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

// The server's one-line error (OpenAI-shaped JSON), or the HTTP status when the body is not that.
async function errorText(resp) {
  try {
    const body = await resp.json();
    return `${resp.status}: ${body.error.message}`;
  } catch (e) {
    return `${resp.status} ${resp.statusText}`;
  }
}

// Fill `el` with a reply's parts: text as text nodes, tool calls and outputs as distinct spans.
function renderParts(el, parts) {
  el.replaceChildren();
  for (const p of parts) {
    if (p.type === "text") {
      el.append(document.createTextNode(p.text));
    } else {
      const span = document.createElement("span");
      span.className = "tool " + p.type;
      span.textContent = p.type === "tool_call" ? "calculator: " + p.text : "= " + p.text;
      el.append(span);
    }
  }
}

// Server-sent events arrive in network reads that may end anywhere, even inside a line or inside a
// multi-byte character: the decoder keeps partial characters, `buffer` keeps the partial event.
async function* sseEvents(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data: ")) yield line.slice(6);
      }
    }
  }
}
