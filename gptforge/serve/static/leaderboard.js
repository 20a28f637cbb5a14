// The arena leaderboard page: a table from /arena/leaderboard.json and the plot /arena/leaderboard.png.
// Model names go into the page through textContent only.
"use strict";

async function load() {
  const summary = document.getElementById("summary");
  let board;
  try {
    const resp = await fetch("/arena/leaderboard.json");
    board = await resp.json();
    if (!resp.ok) throw new Error(board.error.message);
  } catch (e) {
    summary.textContent = "could not load the leaderboard: " + (e.message || e);
    return;
  }
  if (!board.models.length) {
    summary.textContent = "No votes yet: vote in the arena and the ratings appear here.";
    document.body.dataset.state = "ready";
    return;
  }
  const plural = board.battles === 1 ? "" : "s";
  summary.textContent = `${board.battles} voted battle${plural}, ${board.models.length} models ` +
    `(intervals from ${board.rounds} bootstrap rounds).`;
  const tbody = document.querySelector("#table tbody");
  tbody.replaceChildren();
  for (const m of board.models) {
    const tr = document.createElement("tr");
    const cells = [m.rank, m.model, m.rating.toFixed(1), `${m.lower.toFixed(1)} – ${m.upper.toFixed(1)}`,
                   m.battles, `${m.wins} / ${m.ties} / ${m.losses}`, m.elo.toFixed(1)];
    cells.forEach((value, i) => {
      const td = document.createElement("td");
      if (i === 1) td.className = "model";
      td.textContent = String(value);
      tr.append(td);
    });
    tbody.append(tr);
  }
  document.getElementById("table").hidden = false;
  const plot = document.getElementById("plot");
  plot.onload = () => { document.body.dataset.state = "ready"; };
  plot.onerror = () => { document.body.dataset.state = "ready"; };
  plot.src = "/arena/leaderboard.png?battles=" + board.battles;  // a new URL when the votes change
  plot.hidden = false;
}

load();
