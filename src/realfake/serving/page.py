"""The one page `realfake serve` shows at /: upload or drop images, see each verdict in plain words. Self-contained
(inline style and script, no external assets), so it works with no network beyond the server itself."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>realfake: real photo or AI-generated?</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  #drop { border: 2px dashed #888; border-radius: 8px; padding: 2rem; text-align: center; background: #fafafa; }
  #drop.over { background: #e8f0ff; border-color: #36c; }
  table { border-collapse: collapse; width: 100%; margin-top: 1.5rem; }
  th, td { text-align: left; padding: .4rem .6rem; border-bottom: 1px solid #ddd; vertical-align: top; }
  .fake { color: #b00; font-weight: 600; } .real { color: #070; font-weight: 600; }
  .warn { color: #8a5a00; font-size: .9rem; } #error { color: #b00; white-space: pre-wrap; }
  small { color: #666; }
</style>
</head>
<body>
<h1>Real photo or AI-generated?</h1>
<p>A detector trained on CIFAKE's 32x32 images (real CIFAR-10 photos against Stable Diffusion images).
<span id="model"></span> Read its <a href="/model-card" id="card-link">model card</a> for what it can and cannot do.</p>
<div id="drop">
  <p>Drop images here, or choose them:</p>
  <input type="file" id="files" name="file" accept="image/*" multiple>
  <p><label>Operating point: <select id="point"><option value="">the model's own threshold</option></select></label></p>
</div>
<p id="status" role="status"></p>
<p id="error" role="alert"></p>
<table id="results" hidden>
  <thead><tr><th>image</th><th>verdict</th><th>P(fake)</th><th>operating point</th><th>warnings</th></tr></thead>
  <tbody></tbody>
</table>
<script>
"use strict";
let health = {};
const $ = (id) => document.getElementById(id);
function text(tag, content, cls) {
  const el = document.createElement(tag);
  el.textContent = content;
  if (cls) el.className = cls;
  return el;
}
fetch("/healthz").then((r) => r.json()).then((h) => {
  health = h;
  const acc = h.test_accuracy == null ? "" :
    `, ${(100 * h.test_accuracy).toFixed(2)}% accurate on CIFAKE's test images`;
  $("model").textContent = `Model: ${h.model}${acc}.`;
  if (!h.model_card) $("card-link").removeAttribute("href");
  for (const [name, p] of Object.entries(h.operating_points || {})) {
    const option = text("option", `${name}: flags at most ${(100 * p.max_fpr).toFixed(0)}% of real photos ` +
                        `(threshold ${p.threshold.toFixed(3)})`);
    option.value = name;
    $("point").append(option);
  }
});
function warnings(r) {
  const out = [];
  if (r.resampled) {
    const acc = health.resized_accuracy == null ? "" :
      ` (its measured accuracy on resized images is ${(100 * health.resized_accuracy).toFixed(1)}%)`;
    out.push(`This image is not 32x32: it was cropped and resized, and the detector was trained on 32x32 images` +
             `${acc}. Treat the verdict with caution.`);
  }
  if (r.ood) out.push("This image is unlike the images the detector was trained on: the verdict is unreliable.");
  return out;
}
async function send(files) {
  $("error").textContent = "";
  if (!files.length) return;
  $("status").textContent = `Checking ${files.length} image(s)...`;
  const body = new FormData();
  for (const f of files) body.append("file", f, f.name);
  const point = $("point").value;
  const url = "/v1/predict" + (point ? `?operating_point=${encodeURIComponent(point)}` : "");
  let answer;
  try {
    const response = await fetch(url, { method: "POST", body });
    answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
  } catch (err) {
    $("status").textContent = "";
    $("error").textContent = `Could not check the images: ${err.message}`;
    return;
  }
  const tbody = $("results").querySelector("tbody");
  for (const r of answer.results) {
    const row = document.createElement("tr");
    row.className = "result";
    row.dataset.label = r.label;
    row.append(text("td", r.path));
    const words = r.label === "fake" ? "AI-generated" : r.label === "real" ? "Real photo" : r.label;
    row.append(text("td", words, `verdict ${r.label === "real" ? "real" : "fake"}`));
    row.append(text("td", `${(100 * r.p_fake).toFixed(1)}%`, "p-fake"));
    row.append(text("td", answer.operating_point || `default (threshold ${answer.threshold.toFixed(3)})`));
    const cell = document.createElement("td");
    for (const w of warnings(r)) cell.append(text("div", w, "warn"));
    row.append(cell);
    tbody.prepend(row);
  }
  $("results").hidden = false;
  $("status").textContent = `Checked ${answer.results.length} image(s).`;
}
$("files").addEventListener("change", (e) => send([...e.target.files]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  send([...e.dataTransfer.files]);
});
</script>
</body>
</html>
"""
