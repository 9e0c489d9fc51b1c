"""The demo's one page: HTML, CSS and JavaScript with no outside resources (it works offline)."""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>efficientsam_jax demo</title>
<style>
 body { font: 14px system-ui, sans-serif; margin: 16px; color: #222; }
 #bar > * { margin: 0 6px 6px 0; }
 #stage { position: relative; display: inline-block; border: 1px solid #999; cursor: crosshair; }
 #stage canvas { display: block; }
 #overlay, #marks { position: absolute; left: 0; top: 0; pointer-events: none; }
 #status { margin: 8px 0; min-height: 1.4em; }
 .hint { color: #666; }
</style></head>
<body>
<h3>efficientsam_jax: <span id="model"></span></h3>
<div id="bar">
 <label>Open an image <input type="file" id="file" accept="image/*"></label>
 <select id="builtin"><option value="">or a built-in image</option></select>
 <label><input type="radio" name="mode" value="1" checked> positive point</label>
 <label><input type="radio" name="mode" value="0"> negative point</label>
 <label><input type="radio" name="mode" value="box"> box (drag)</label>
 <button id="clear">Clear prompts</button>
 <button id="everything">Segment everything</button>
 <a id="maskpng" href="api/mask.png" download="mask.png">Download mask (PNG)</a>
 <a id="cocojson" href="api/result.json" download="result.json">Download result (COCO JSON)</a>
</div>
<div class="hint">Click on the image for points (left: the selected kind), or choose "box"
 and drag.</div>
<div id="status">Open an image.</div>
<div id="stage"><canvas id="image"></canvas><canvas id="overlay"></canvas><canvas id="marks">
</canvas></div>
<script>
const $ = (id) => document.getElementById(id);
const state = {points: [], labels: [], box: null, drag: null, width: 0, height: 0};
window.demoResult = null;  // the last answer of the server (tests read it)

async function call(path, options) {
  const response = await fetch(path, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}
function status(text) { $("status").textContent = text; }
function drawPicture(canvas, url) {
  return new Promise((resolve) => {
    const picture = new Image();
    picture.onload = () => {
      const context = canvas.getContext("2d");
      context.clearRect(0, 0, canvas.width, canvas.height);
      context.drawImage(picture, 0, 0);
      resolve();
    };
    picture.src = url;
  });
}
async function showImage(info) {
  state.width = info.width; state.height = info.height;
  for (const id of ["image", "overlay", "marks"]) {
    $(id).width = info.width; $(id).height = info.height;
  }
  await drawPicture($("image"), info.image);
  clearPrompts();
  status(`${info.name}: ${info.width}x${info.height}, embedded in ${info.embed_seconds} s ` +
         `(ready in ${info.ready_seconds} s). Click on it.`);
  $("stage").dataset.ready = "1";
}
function clearPrompts() {
  state.points = []; state.labels = []; state.box = null;
  $("overlay").getContext("2d").clearRect(0, 0, state.width, state.height);
  drawMarks();
}
function drawMarks() {
  const context = $("marks").getContext("2d");
  context.clearRect(0, 0, state.width, state.height);
  state.points.forEach(([x, y], i) => {
    context.beginPath(); context.arc(x, y, 5, 0, 2 * Math.PI);
    context.fillStyle = state.labels[i] ? "#1e90ff" : "#000"; context.fill();
    context.strokeStyle = "#fff"; context.lineWidth = 2; context.stroke();
  });
  const box = state.drag || state.box;
  if (box) {
    context.strokeStyle = "#ff8c00"; context.lineWidth = 2;
    context.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
  }
}
function imageXY(event) {  // page pixels -> image pixels (the canvas may be scaled by CSS)
  const rect = $("image").getBoundingClientRect();
  return [(event.clientX - rect.left) * state.width / rect.width,
          (event.clientY - rect.top) * state.height / rect.height];
}
async function segment() {
  $("stage").dataset.busy = "1";
  try {
    const result = await call("api/segment", {method: "POST", body: JSON.stringify(
        {points: state.points, labels: state.labels, box: state.box})});
    await drawPicture($("overlay"), result.overlay);
    window.demoResult = result;
    status(`mask: predicted IoU ${result.iou.toFixed(3)}, ${result.area} pixels, ` +
           `${result.seconds} s`);
  } catch (error) { status("error: " + error.message); }
  delete $("stage").dataset.busy;
}
function mode() { return document.querySelector("input[name=mode]:checked").value; }
$("stage").addEventListener("mousedown", (event) => {
  if (!state.width) return;
  if (mode() === "box") { const [x, y] = imageXY(event); state.drag = [x, y, x, y]; }
});
$("stage").addEventListener("mousemove", (event) => {
  if (!state.drag) return;
  const [x, y] = imageXY(event); state.drag[2] = x; state.drag[3] = y; drawMarks();
});
$("stage").addEventListener("mouseup", (event) => {
  if (!state.width) return;
  const [x, y] = imageXY(event);
  if (mode() === "box") {
    if (!state.drag) return;
    const [x0, y0] = state.drag;
    state.box = [Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)];
    state.drag = null;
  } else {
    state.points.push([x, y]); state.labels.push(Number(mode()));
  }
  drawMarks(); segment();
});
$("clear").onclick = clearPrompts;
$("everything").onclick = async () => {
  status("segmenting everything...");
  try {
    const result = await call("api/everything", {method: "POST", body: "{}"});
    state.points = []; state.labels = []; state.box = null; drawMarks();
    await drawPicture($("overlay"), result.overlay);
    window.demoResult = result;
    status(`${result.count} masks in ${result.seconds} s`);
  } catch (error) { status("error: " + error.message); }
};
$("file").onchange = async () => {
  const file = $("file").files[0];
  if (!file) return;
  status("embedding " + file.name + "...");
  delete $("stage").dataset.ready;
  try {
    showImage(await call("api/image?name=" + encodeURIComponent(file.name),
                         {method: "POST", body: file}));
  } catch (error) { status("error: " + error.message); }
};
$("builtin").onchange = async () => {
  const name = $("builtin").value;
  if (!name) return;
  status("embedding " + name + "...");
  delete $("stage").dataset.ready;
  try {
    showImage(await call("api/builtin?name=" + encodeURIComponent(name), {method: "POST"}));
  } catch (error) { status("error: " + error.message); }
};
call("api/info").then((info) => {
  $("model").textContent = info.model;
  for (const name of info.builtins) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    $("builtin").appendChild(option);
  }
});
</script></body></html>
"""
