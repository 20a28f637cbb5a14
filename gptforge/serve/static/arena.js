// The gptforge arena page: one prompt, two anonymous replies streamed side by side from
// POST /arena/battles, then a vote (POST /arena/battles/{id}/vote) that reveals the model names.
// The page never knows the names before the vote: the server sends them only in the vote's answer.
// Model output only ever goes into the page through textContent (never innerHTML).
// States (body[data-state], which the browser test waits on): idle -> busy (streaming) -> ready
// (both replies complete, vote) -> voted; an error goes back to idle.
"use strict";

const VOTE_TEXT = { a: "A is better", b: "B is better", tie: "a tie", bothbad: "both are bad" };

let battleId = null;
let parts = { a: [], b: [] };  // each side's reply: [{type: "text" | "tool_call" | "tool_output", text}]

function setState(state) { document.body.dataset.state = state; }
function voteButtons() { return document.querySelectorAll("button.vote"); }

function content(side) { return document.querySelector(`#side-${side} .content`); }

// Forget the last battle: empty sides, no names, votes off.
function reset() {
  battleId = null;
  parts = { a: [], b: [] };
  for (const side of ["a", "b"]) {
    renderParts(content(side), []);
    $("name-" + side).textContent = "";
    $("side-" + side).classList.remove("winner");
  }
  voteButtons().forEach((b) => { b.disabled = true; });
  $("result").textContent = "";
  $("result").className = "";
  $("prompt-shown").hidden = true;
  $("new-battle").disabled = true;
  setStatus("");
}

function showError(text) {
  $("result").textContent = text;
  $("result").className = "error";
}

async function battle(prompt) {
  reset();
  $("prompt-shown").textContent = prompt;
  $("prompt-shown").hidden = false;
  $("send").disabled = true;
  setState("busy");
  setStatus("both models are answering…");
  // max tokens left empty: the server's default, which fits the smallest model's context
  const body = { prompt, temperature: parseFloat($("temperature").value) };
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;
  try {
    const resp = await fetch("/arena/battles", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (!resp.ok) throw new Error(await errorText(resp));
    for await (const data of sseEvents(resp)) {
      if (data === "[DONE]") break;
      const ev = JSON.parse(data);
      if (ev.error) throw new Error(ev.error.message);
      if (ev.battle_id) {
        battleId = ev.battle_id;
        continue;
      }
      const list = parts[ev.side];
      if (ev.part) {
        list.push({ type: ev.part.type, text: ev.part.text });
      } else if (ev.text) {
        const last = list[list.length - 1];
        if (last && last.type === "text") last.text += ev.text;
        else list.push({ type: "text", text: ev.text });
      }
      renderParts(content(ev.side), list);
    }
    if (!battleId) throw new Error("the battle ended before it was stored; try again");
    voteButtons().forEach((b) => { b.disabled = false; });
    setStatus("Which reply is better?");
    $("send").disabled = false;  // a new prompt leaves this battle unvoted
    $("new-battle").disabled = false;
    setState("ready");
  } catch (e) {
    showError(String(e.message || e));
    setStatus("");
    $("send").disabled = false;
    setState("idle");
  }
}

async function vote(choice) {
  if (!battleId) return;
  voteButtons().forEach((b) => { b.disabled = true; });
  setStatus("saving your vote…");
  try {
    const resp = await fetch(`/arena/battles/${encodeURIComponent(battleId)}/vote`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ vote: choice }),
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    const result = await resp.json();  // the vote is committed: only now are the names known
    $("name-a").textContent = result.model_a;
    $("name-b").textContent = result.model_b;
    if (choice === "a" || choice === "b") $("side-" + choice).classList.add("winner");
    $("result").textContent = `You voted: ${VOTE_TEXT[choice]}. Model A was ${result.model_a}, ` +
      `model B was ${result.model_b}.`;
    setStatus("vote saved");
    setState("voted");
  } catch (e) {
    showError(String(e.message || e));
    voteButtons().forEach((b) => { b.disabled = false; });
    setStatus("");
  }
}

function send(event) {
  event.preventDefault();
  const prompt = $("input").value;
  if (!prompt.trim() || document.body.dataset.state === "busy") return;
  $("input").value = "";
  battle(prompt);
}

$("composer").addEventListener("submit", send);
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) send(e);
});
voteButtons().forEach((b) => b.addEventListener("click", () => vote(b.dataset.vote)));
$("new-battle").addEventListener("click", () => { reset(); setState("idle"); $("input").focus(); });
setState("idle");
