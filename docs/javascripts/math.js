// Typesets the math that pymdownx.arithmatex marks (class "arithmatex"), with the KaTeX the site ships.
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll(".arithmatex").forEach(function (el) {
    var tex = el.textContent.trim();
    var display = tex.startsWith("\\[");
    tex = tex.replace(/^\\\(|\\\)$|^\\\[|\\\]$/g, "");
    try {
      katex.render(tex, el, { displayMode: display, throwOnError: true });
    } catch (err) {
      console.warn("formula left as plain text: " + err.message);
    }
  });
});
