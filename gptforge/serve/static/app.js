// The gptforge chat page: talks to this server's /v1/chat/completions with stream: true.
// No framework and no build step. Model output only ever goes into the page through textContent
// (never innerHTML), so a reply that contains HTML is shown as text.
"use strict";

const messagesEl = $("messages");

// The conversation sent with each request: {role, content}, where an assistant's content is the
// server's list of parts (gptforge_parts: text, tool_call, tool_output) so tool calls go back as such.
let history = [];
let controller = null;  // AbortController of the reply being streamed, if any

async function loadModels() {
  const resp = await fetch("/v1/models", { headers: headers() });
  if (!resp.ok) {
    setStatus("could not list models: " + (await errorText(resp)));
    return;
  }
  const select = $("model");
  select.replaceChildren();
  for (const m of (await resp.json()).data) {
    if (!m.chat) continue;  // base models have no chat tokens: /v1/completions only
    const opt = document.createElement("option");
    opt.value = m.id;
    opt.textContent = `${m.id} (${m.context_length} tokens)`;
    opt.dataset.context = m.context_length;
    select.append(opt);
  }
  setStatus(select.options.length ? "" : "this server has no chat model");
  fitMaxTokens();
}

// Keep max tokens within what the chosen model's context allows (the server refuses more).
function fitMaxTokens() {
  const opt = $("model").selectedOptions[0];
  if (!opt) return;
  const context = parseInt(opt.dataset.context, 10);
  const input = $("max-tokens");
  input.max = context - 8;
  input.value = Math.min(parseInt(input.value, 10) || 256, Math.floor(context / 2));
}

function asParts(content) {
  return typeof content === "string" ? [{ type: "text", text: content }] : content;
}

// Redraw every message from `history` (cheap at chat sizes; keeps the DOM and the history in step).
function render() {
  messagesEl.replaceChildren();
  history.forEach((m, i) => {
    const div = document.createElement("div");
    div.className = "msg " + m.role;
    const role = document.createElement("div");
    role.className = "role";
    role.textContent = m.role;
    if (m.role === "user") {
      const edit = document.createElement("button");
      edit.className = "edit";
      edit.type = "button";
      edit.textContent = "edit";
      edit.onclick = () => editFrom(i);
      role.append(edit);
    }
    const content = document.createElement("div");
    content.className = "content";
    renderParts(content, asParts(m.content));
    div.append(role, content);
    messagesEl.append(div);
  });
  messagesEl.scrollTop = messagesEl.scrollHeight;
  const last = history[history.length - 1];
  $("regenerate").disabled = controller !== null || !last || last.role !== "assistant";
}

function showError(text) {
  const div = document.createElement("div");
  div.className = "msg error";
  div.textContent = text;
  messagesEl.append(div);
}

// Edit-and-resend: put message i back into the composer and forget it and everything after it.
function editFrom(i) {
  if (controller) return;
  $("input").value = history[i].content;
  history = history.slice(0, i);
  render();
  $("input").focus();
}

function requestBody() {
  const body = {
    model: $("model").value,
    messages: history,
    stream: true,
    stream_options: { include_usage: true },
    temperature: parseFloat($("temperature").value),
    max_tokens: parseInt($("max-tokens").value, 10),
  };
  const topK = parseInt($("top-k").value, 10);
  if (!Number.isNaN(topK)) body.top_k = topK;
  const stop = $("stop").value;
  if (stop) body.stop = stop;
  return body;
}

// Ask for the next assistant turn of `history` and stream it into a new assistant message.
async function complete() {
  const reply = { role: "assistant", content: [] };
  controller = new AbortController();
  $("send").disabled = true;
  $("stop-button").disabled = false;
  setStatus("generating…");
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody()), signal: controller.signal,
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    history.push(reply);
    render();
    const content = messagesEl.lastChild.querySelector(".content");
    const parts = reply.content;
    for await (const data of sseEvents(resp)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) {
        setStatus(`${chunk.usage.completion_tokens} tokens (prompt ${chunk.usage.prompt_tokens})`);
      }
      for (const choice of chunk.choices) {
        const delta = choice.delta;
        if (delta.gptforge_part) {
          parts.push({ type: delta.gptforge_part.type, text: delta.gptforge_part.text });
        } else if (delta.content) {
          const last = parts[parts.length - 1];
          if (last && last.type === "text") last.text += delta.content;
          else parts.push({ type: "text", text: delta.content });
        }
      }
      renderParts(content, parts);
      messagesEl.scrollTop = messagesEl.scrollHeight;
    }
  } catch (e) {
    if (e.name !== "AbortError") {
      showError(String(e.message || e));
      setStatus("");
    } else {
      setStatus("stopped");
    }
  } finally {
    // an empty reply cannot go back to the server (blank turns are refused): drop it
    const blank = reply.content.every((p) => p.type === "text" && !p.text.trim());
    if (blank && history[history.length - 1] === reply) history.pop();
    controller = null;
    $("send").disabled = false;
    $("stop-button").disabled = true;
    const last = history[history.length - 1];
    $("regenerate").disabled = !last || last.role !== "assistant";
    document.body.dataset.state = "idle";  // for the browser test: the reply is complete
  }
}

function send(event) {
  event.preventDefault();
  const text = $("input").value;
  if (controller || !text.trim()) return;
  if (history.length && history[history.length - 1].role === "user") history.pop();  // a failed turn
  history.push({ role: "user", content: text });
  $("input").value = "";
  render();
  document.body.dataset.state = "busy";
  complete();
}

function regenerate() {
  if (controller || !history.length || history[history.length - 1].role !== "assistant") return;
  history.pop();
  render();
  document.body.dataset.state = "busy";
  complete();
}

$("composer").addEventListener("submit", send);
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) send(e);
});
$("regenerate").addEventListener("click", regenerate);
$("stop-button").addEventListener("click", () => controller && controller.abort());
$("clear").addEventListener("click", () => { if (!controller) { history = []; render(); setStatus(""); } });
$("api-key").addEventListener("change", loadModels);
$("model").addEventListener("change", fitMaxTokens);
document.body.dataset.state = "idle";
loadModels();
