// Table rows built from text only (textContent): nothing a page receives becomes markup.
"use strict";
function renderRows(table, head, lines) {
  table.replaceChildren();
  for (const [cells, tag] of [[head, "th"], ...lines.map((line) => [line, "td"])]) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement(tag);
      const [text, cls] = Array.isArray(cell) ? cell : [cell, ""];
      td.textContent = text == null ? "" : String(text);
      if (cls) td.className = cls;
      tr.append(td);
    }
    table.append(tr);
  }
}
