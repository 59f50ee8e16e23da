// What the page shows: status and problem messages, and the faces of an answer drawn over an
// image with the list beside it (boxes, emotions, confidences). Loaded before app.js, which
// calls these functions.
"use strict";

const BOX_COLOUR = "#00e0ff"; // tests/serving/test_web_page.py looks for this colour
const HALO_COLOUR = "rgba(0, 0, 0, 0.6)";
const LABEL_TEXT_COLOUR = "#00161c";
const LINE_PX = 3; // box line width on screen (CSS pixels)
const FONT_PX = 14; // label text size on screen (CSS pixels)

// ------------------------------------------------------------------ messages

function showProblem(element, problem) {
  const title = document.createElement("strong");
  title.textContent = problem instanceof Problem ? problem.title : "Something went wrong";
  const detail = document.createElement("span");
  detail.className = "detail";
  detail.textContent = problem instanceof Problem ? problem.detail : String(problem);
  element.replaceChildren(title, " ", detail);
  element.hidden = false;
}

function clearProblem(element) {
  element.hidden = true;
  element.replaceChildren();
}

function setStatus(element, state, text) {
  element.dataset.state = state;
  element.textContent = text;
}

function plural(count, word) {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

// ------------------------------------------------------------------ drawing

/** Boxes and "emotion 0.87" labels of `answer` on `ctx`, whose canvas shows the whole image;
 * `unit` is canvas pixels per CSS pixel, so lines and text look the same size everywhere. */
function drawFaces(ctx, answer, unit) {
  const { width, height } = ctx.canvas;
  const sx = width / answer.width;
  const sy = height / answer.height;
  const line = LINE_PX * unit;
  const boxes = answer.faces.map((face) => {
    const [x1, y1, x2, y2] = face.box;
    return { face, x: x1 * sx, y: y1 * sy, w: (x2 - x1) * sx, h: (y2 - y1) * sy };
  });
  for (const { x, y, w, h } of boxes) {
    // The line lies inside the box, so a box along the image border stays visible.
    const rect = [x + line / 2, y + line / 2, Math.max(w - line, 1), Math.max(h - line, 1)];
    ctx.lineWidth = line + 2 * unit;
    ctx.strokeStyle = HALO_COLOUR;
    ctx.strokeRect(...rect);
    ctx.lineWidth = line;
    ctx.strokeStyle = BOX_COLOUR;
    ctx.strokeRect(...rect);
  }
  ctx.font = `600 ${FONT_PX * unit}px system-ui, -apple-system, "Segoe UI", sans-serif`;
  ctx.textBaseline = "middle";
  const pad = 4 * unit;
  const labelHeight = FONT_PX * unit + 2 * pad;
  for (const { face, x, y } of boxes) {
    const text = `${face.emotion} ${face.confidence.toFixed(2)}`;
    const labelWidth = ctx.measureText(text).width + 2 * pad;
    const left = Math.max(0, Math.min(x, width - labelWidth));
    const top = y - labelHeight >= 0 ? y - labelHeight : y; // above the box, else just inside
    ctx.fillStyle = BOX_COLOUR;
    ctx.fillRect(left, top, labelWidth, labelHeight);
    ctx.fillStyle = LABEL_TEXT_COLOUR;
    ctx.fillText(text, left + pad, top + labelHeight / 2);
  }
}

/** Size `canvas` to cssWidth x cssHeight on screen, with a backing store at the screen's
 * pixel density; returns canvas pixels per CSS pixel. */
function fitCanvas(canvas, cssWidth, cssHeight) {
  const unit = window.devicePixelRatio || 1;
  canvas.style.width = `${cssWidth}px`;
  canvas.style.height = `${cssHeight}px`;
  canvas.width = Math.max(1, Math.round(cssWidth * unit));
  canvas.height = Math.max(1, Math.round(cssHeight * unit));
  return unit;
}

function renderFaces(list, answer) {
  list.dataset.width = String(answer.width);
  list.dataset.height = String(answer.height);
  list.replaceChildren(
    ...answer.faces.map((face, index) => {
      const item = document.createElement("li");
      item.className = "face";
      item.dataset.emotion = face.emotion;
      item.dataset.box = face.box.map((v) => v.toFixed(1)).join(",");

      const head = document.createElement("p");
      head.className = "face-head";
      const number = document.createElement("span");
      number.className = "face-number";
      number.textContent = `Face ${index + 1}`;
      const emotion = document.createElement("strong");
      emotion.textContent = face.emotion;
      const confidence = document.createElement("span");
      confidence.className = "confidence";
      confidence.textContent = face.confidence.toFixed(2);
      const [x1, y1, x2, y2] = face.box;
      const where = document.createElement("span");
      where.className = "where";
      where.textContent = `${Math.round(x2 - x1)}×${Math.round(y2 - y1)} px at (${Math.round(x1)}, ${Math.round(y1)})`;
      head.append(number, " ", emotion, " ", confidence, " ", where);

      const scores = document.createElement("dl");
      scores.className = "scores";
      for (const [name, value] of Object.entries(face.scores)) {
        const row = document.createElement("div");
        row.className = name === face.emotion ? "score is-top" : "score";
        const term = document.createElement("dt");
        term.textContent = name;
        const bar = document.createElement("span");
        bar.className = "bar";
        bar.setAttribute("aria-hidden", "true");
        const fill = document.createElement("span");
        fill.style.width = `${Math.max(0, Math.min(1, value)) * 100}%`;
        bar.append(fill);
        const number = document.createElement("span");
        number.className = "value";
        number.textContent = value.toFixed(2);
        const definition = document.createElement("dd");
        definition.append(bar, number);
        row.append(term, definition);
        scores.append(row);
      }
      item.append(head, scores);
      return item;
    }),
  );
}
