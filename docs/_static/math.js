// Typesets Sphinx's math (span.math inline, div.math display) with the KaTeX the site ships.
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("span.math, div.math").forEach(function (el) {
    var display = el.tagName === "DIV";
    var tex = el.textContent.trim().replace(/^\\[([]|\\[)\]]$/g, "");
    try {
      katex.render(tex, el, { displayMode: display, throwOnError: true });
    } catch (err) {
      console.warn("formula left as plain text: " + err.message);
    }
  });
});
