"""Every command's report.html, opened in headless Chromium as a reader would (skipped without one).

The page is loaded from a file with the network switched off; a probe injected before the report's own
code records console errors and uncaught exceptions, and after the load event checks that every image
decoded and every TeX block was typeset by the KaTeX shipped inside the page.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gradest.cli import main

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless Chromium installed")

_PROBE_HEAD = """<script>
window.__problems = [];
window.addEventListener('error', function (e) { window.__problems.push('error: ' + e.message); });
var __error = console.error, __warn = console.warn;
console.error = function () { window.__problems.push('console.error: ' + [].join.call(arguments, ' '));
  __error.apply(console, arguments); };
console.warn = function () { window.__problems.push('console.warn: ' + [].join.call(arguments, ' '));
  __warn.apply(console, arguments); };
</script>"""

_PROBE_TAIL = r"""<script>
// blocks wider than the column they sit in: cut off, or a horizontal scroll bar
function overflowing() {
  return [].slice.call(document.querySelectorAll('.math, table, figure, img, pre')).filter(function (el) {
    var box = el.parentElement.getBoundingClientRect();
    return el.scrollWidth > el.clientWidth + 1 || el.getBoundingClientRect().right > box.right + 1;
  }).map(function (el) {
    return el.tagName + '.' + el.className + ' ' + el.scrollWidth + '/' + el.clientWidth + ': '
      + el.textContent.slice(0, 60);
  });
}
// markup or Python printed as text: tags, entities, TeX commands, reST roles, None/nan
function rawMarkup() {
  var body = document.body.cloneNode(true);  // the text a reader sees: no scripts, styles, MathML copies
  [].slice.call(body.querySelectorAll('script, style, .katex-mathml, #__result')).forEach(function (el) {
    el.remove();
  });
  var text = body.textContent;
  var found = text.match(new RegExp(['<\\/?[a-z][a-z0-9]*[ >\\/]', '&[a-z]+;',
    '\\\\(frac|mathbb|text|sum|mathrm)\\b', ':(func|class|meth):`',
    '\\bNone\\b', '\\bnan\\b', '\\binf\\b'].join('|'), 'g'));
  return found || [];
}
window.addEventListener('load', function () {
  var imgs = [].slice.call(document.images);
  var tex = [].slice.call(document.querySelectorAll('[data-tex], .arithmatex'));
  var result = {
    problems: window.__problems,
    images: imgs.length,
    broken: imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length,
    tex: tex.length,
    untypeset: tex.filter(function (e) { return !e.querySelector('.katex'); }).length,
    katexErrors: document.querySelectorAll('.katex-error').length,
    overflow: overflowing(),
    raw: rawMarkup()
  };
  var pre = document.createElement('pre');
  pre.id = '__result';
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});
</script>"""


def browse(report: Path, tmp: Path) -> dict:
    """Load ``report`` in headless Chromium without network; the probe's findings as a dict."""
    text = report.read_text(encoding="utf-8")
    probed = report.parent / f"probed-{report.stem}.html"  # beside it: relative links still resolve
    probed.write_text(text.replace("<head>", "<head>" + _PROBE_HEAD, 1)
                      .replace("</body>", _PROBE_TAIL + "</body>"), encoding="utf-8")
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",  # any fetch would fail
           f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=10000", "--window-size=1280,2000",
           "--dump-dom",
           probed.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="__result">(.*?)</pre>', dom, flags=re.S)
    assert found, f"the probe did not report for {report}; browser said: {dom[-500:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def _gaussian(out: Path) -> list[str]:
    return ["gaussian", "--out", str(out), "--steps", "20", "--samples-per-step", "4"]


def _sweep(out: Path) -> list[str]:
    return ["sweep", "--cost", "exp", "--k", "0.5,2", "--param", "loc=1", "--param", "scale=1",
            "--estimator", "pathwise", "--estimator", "score", "--samples", "500", "--out", str(out)]


def _blr(out: Path) -> list[str]:
    return ["blr", "--estimator", "pathwise", "--steps", "6", "--log-every", "3", "--samples", "4",
            "--variance-samples", "8", "--out", str(out)]


def _vae(out: Path) -> list[str]:
    return ["vae", "train", "--dataset", "digits", "--hidden", "16", "--latent", "2", "--epochs", "1",
            "--batch-size", "256", "--var-repeats", "3", "--iwae-k", "4", "--out", str(out)]


def _discrete(out: Path) -> list[str]:
    return ["discrete", "--bits", "1,4", "--t", "0.45", "--estimator", "score-loo", "--estimator", "disarm",
            "--samples", "200", "--out", str(out)]


def _vae_compare(out: Path) -> list[str]:
    return ["vae", "compare", "--dataset", "digits", "--hidden", "16", "--latent", "2", "--epochs", "1",
            "--batch-size", "256", "--var-repeats", "3", "--iwae-k", "4", "--estimator", "pathwise",
            "--estimator", "score", "--out", str(out)]


COMMANDS = {"gaussian": _gaussian, "sweep": _sweep, "blr": _blr, "vae-train": _vae,
            "vae-compare": _vae_compare, "discrete": _discrete}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_report_renders_in_a_browser(command, tmp_path):
    out = tmp_path / command
    assert main(COMMANDS[command](out)) == 0
    seen = browse(out / "report.html", tmp_path)
    assert seen["problems"] == [], seen["problems"]
    assert seen["images"] > 0 and seen["broken"] == 0, seen
    assert seen["tex"] > 0 and seen["untypeset"] == 0 and seen["katexErrors"] == 0, seen
    assert seen["overflow"] == [], f"blocks wider than the page: {seen['overflow']}"
    assert seen["raw"] == [], f"markup or Python values as text: {seen['raw']}"


def test_the_probe_catches_untypeset_math_and_broken_images(tmp_path):
    """The check can fail: a page whose math cannot be typeset and whose image is broken."""
    from gradest import report as html

    page = html.page("probe", html.math("a/b", tex=r"\frac{a}{"),
                     '<img alt="x" src="data:image/png;base64,AAAA">')
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "report.html").write_text(page, encoding="utf-8")
    seen = browse(tmp_path / "bad" / "report.html", tmp_path)
    assert seen["untypeset"] == 1 and seen["broken"] == 1
    assert any("plain text" in p for p in seen["problems"])


def test_the_probe_catches_overflow_and_raw_markup(tmp_path):
    """The layout check can fail: a table wider than the page, a formula that cannot shrink enough, a
    Python None and a TeX command printed as text."""
    from gradest import report as html

    wide = html.table([f"column {i}" for i in range(30)], [[f"value-{i}-long" for i in range(30)]])
    formula = html.math("x", tex=r"\text{" + "a very long formula " * 30 + "}")
    page = html.page("probe", wide, formula, html.paragraph(r"seen None and \frac{a}{b}"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "report.html").write_text(page, encoding="utf-8")
    seen = browse(tmp_path / "bad" / "report.html", tmp_path)
    assert any(o.startswith("TABLE") for o in seen["overflow"]), seen["overflow"]
    assert any(o.startswith("DIV.math") for o in seen["overflow"]), seen["overflow"]
    assert "None" in seen["raw"] and "\\frac" in seen["raw"], seen["raw"]


def test_the_gaussian_report_typesets_its_derivation(tmp_path):
    out = tmp_path / "g"
    assert main(_gaussian(out)) == 0
    seen = browse(out / "report.html", tmp_path)
    assert seen["tex"] >= 4 and seen["untypeset"] == 0
