// The operators' page: signs in with the admin token once, keeps the session it gets in
// exchange in sessionStorage (this origin's alone, port included, unlike a cookie), sends it in
// a header to read the admin routes, and writes every value as text (textContent, never
// innerHTML): answers and names come from clients and upstreams.
"use strict";

const MAX_CELLS = 1000000; // word-diff table bound; past it the two answers are shown whole
const SESSION = "repro-session";
const HEADER = "X-Repro-Session";

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function showLogin(failed) {
  sessionStorage.removeItem(SESSION);
  document.getElementById("board").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("error").hidden = !failed;
  document.getElementById("token").focus();
}

async function getJSON(path) {
  const headers = { Accept: "application/json", [HEADER]: sessionStorage.getItem(SESSION) || "" };
  const response = await fetch(path, { credentials: "omit", headers });
  if (response.status === 401 || response.status === 404) {
    showLogin(false);
    throw new Error("signed out");
  }
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

async function signIn(event) {
  event.preventDefault();
  const field = document.getElementById("token");
  const response = await fetch("/admin/ui/login", {
    method: "POST", credentials: "omit", body: new URLSearchParams({ token: field.value }),
  });
  field.value = "";
  if (!response.ok) { showLogin(true); return; }
  sessionStorage.setItem(SESSION, (await response.json()).session);
  await load();
}

async function signOut() {
  const session = sessionStorage.getItem(SESSION) || "";
  sessionStorage.removeItem(SESSION);
  await fetch("/admin/ui/logout", { method: "POST", credentials: "omit", headers: { [HEADER]: session } });
  showLogin(false);
}

// A client's name between bidi isolates: its direction controls cannot reorder the text after it
// on the same line (an option's label is one line, unlike a table cell).
function isolated(text) {
  return "\u2068" + text + "\u2069";
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function showStats(stats) {
  document.getElementById("hit-ratio").textContent =
    stats.hit_ratio === null ? "-" : (stats.hit_ratio * 100).toFixed(1) + " %";
  document.getElementById("lookups").textContent = stats.hits + " / " + stats.misses;
  document.getElementById("tokens-saved").textContent = String(stats.tokens_saved);
  document.getElementById("store-size").textContent = stats.entries + " answers, " + bytes(stats.bytes);
}

function timeline(rotations, history) {
  const list = el("ul", undefined, "timeline");
  if (history.length) {
    const first = history[0];
    const item = el("li");
    item.append(el("span", first.first_seen + " first "), el("code", first.fingerprint, "fingerprint"));
    list.append(item);
  }
  for (const r of rotations) {
    const item = el("li", undefined, r.change === "rotated back" ? "back" : "");
    item.append(
      el("span", r.at + " " + r.change + " "),
      el("code", r.from, "fingerprint"), el("span", " \u2192 "), el("code", r.to, "fingerprint"),
    );
    list.append(item);
  }
  return list;
}

function showModels(fingerprints, report) {
  const body = document.querySelector("#models tbody");
  body.replaceChildren();
  for (const [model, state] of Object.entries(fingerprints)) {
    const rotations = (report.models[model] || { rotations: [] }).rotations;
    const row = el("tr");
    const cell = el("td");
    cell.append(timeline(rotations, state.history));
    row.append(el("td", model, "model"), el("td", state.current, "fingerprint current"), cell);
    body.append(row);
  }
}

function tokens(text) {
  return text.split(/(\s+)/).filter((t) => t.length > 0);
}

// Longest common subsequence of words: the words only in the old answer are <del>, only in the
// new one <ins>, in their places.
function diff(oldText, newText) {
  const a = tokens(oldText), b = tokens(newText);
  if ((a.length + 1) * (b.length + 1) > MAX_CELLS) {
    return { old: [["del", oldText]], new: [["ins", newText]] };
  }
  const width = b.length + 1;
  const table = new Uint32Array((a.length + 1) * width);
  for (let i = a.length - 1; i >= 0; i -= 1) {
    for (let j = b.length - 1; j >= 0; j -= 1) {
      table[i * width + j] = a[i] === b[j]
        ? table[(i + 1) * width + j + 1] + 1
        : Math.max(table[(i + 1) * width + j], table[i * width + j + 1]);
    }
  }
  const left = [], right = [];
  let i = 0, j = 0;
  while (i < a.length && j < b.length) {
    if (a[i] === b[j]) { left.push(["span", a[i]]); right.push(["span", b[j]]); i += 1; j += 1; }
    else if (table[(i + 1) * width + j] >= table[i * width + j + 1]) { left.push(["del", a[i]]); i += 1; }
    else { right.push(["ins", b[j]]); j += 1; }
  }
  for (; i < a.length; i += 1) left.push(["del", a[i]]);
  for (; j < b.length; j += 1) right.push(["ins", b[j]]);
  return { old: left, new: right };
}

function pre(parts, className) {
  const block = el("pre", undefined, className);
  for (const [tag, text] of parts) block.append(el(tag, text));
  return block;
}

function showRotation(rotation) {
  const summary = document.getElementById("rotation-summary");
  const examples = document.getElementById("examples");
  examples.replaceChildren();
  if (!rotation) { summary.textContent = "No rotation yet."; return; }
  const d = rotation.distance;
  summary.textContent = rotation.requests + " requests answered under both, " + rotation.identical +
    " identical" + (d.mean === null ? "" : ", mean distance " + d.mean.toFixed(3) + ", p90 " + d.p90.toFixed(3));
  if (rotation.examples.length) {
    const heads = el("div", undefined, "side-by-side heads");
    heads.append(el("strong", "before: " + rotation.from), el("strong", "after: " + rotation.to));
    examples.append(heads);
  }
  if (!rotation.examples.length && rotation.requests) {
    examples.append(el("p", "Every answer is the same under both fingerprints."));
  }
  for (const example of rotation.examples) {
    const changed = diff(example.old, example.new);
    const pair = el("div", undefined, "side-by-side example");
    pair.append(
      el("div", "key " + example.key.slice(0, 16) + "\u2026, distance " + example.distance.toFixed(3), "example-head"),
      pre(changed.old, "old"), pre(changed.new, "new"),
    );
    examples.append(pair);
  }
}

function showRotations(report) {
  const select = document.getElementById("rotation");
  const choices = [];
  for (const [model, state] of Object.entries(report.models)) {
    for (const rotation of state.rotations) choices.push({ model, rotation });
  }
  choices.reverse(); // the latest first
  select.replaceChildren();
  choices.forEach((choice, index) => {
    const r = choice.rotation;
    select.append(el("option", isolated(choice.model) + ": " + r.from + " \u2192 " + r.to + " (" + r.change + ", " + r.at + ")"));
    select.lastChild.value = String(index);
  });
  select.onchange = () => showRotation(choices[Number(select.value)].rotation);
  showRotation(choices.length ? choices[0].rotation : null);
}

async function load() {
  if (!sessionStorage.getItem(SESSION)) { showLogin(false); return; }
  document.getElementById("login").hidden = true;
  document.getElementById("board").hidden = false;
  const status = document.getElementById("status");
  status.hidden = true;
  try {
    const [stats, fingerprints, report] = await Promise.all([
      getJSON("/admin/stats"), getJSON("/admin/fingerprints"), getJSON("/admin/rotations?examples=10"),
    ]);
    showStats(stats);
    showModels(fingerprints, report);
    showRotations(report);
    document.body.dataset.loaded = "true";
  } catch (error) {
    if (!sessionStorage.getItem(SESSION)) return; // signed out: the form is shown
    status.textContent = String(error.message || error);
    status.hidden = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login-form").addEventListener("submit", signIn);
  document.getElementById("sign-out").addEventListener("click", signOut);
  load();
});
