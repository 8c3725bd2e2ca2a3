"""The documentation site as a reader opens it: built, opened from disk (``file://``) in headless Chromium
with the network off, every link of its navigation clicked (skipped without Chromium or Sphinx).

A harness page loads the site in a frame (``--disable-web-security`` lets it read a ``file://`` frame)
and, starting from ``index.html``, clicks every link of every page's navigation (header, sidebars,
breadcrumbs, previous/next) and every in-site link of its text. On every page it reached it checks:

* the link led to a page of the site, not a folder (a directory listing) or a missing file;
* every formula was typeset by the shipped KaTeX, with no KaTeX error;
* layout, at a desktop and a narrow width: the page does not scroll sideways, no formula, table,
  code block, figure or image reaches past the right edge of the text column, and none of them is
  wider than its own box except the blocks meant to scroll sideways: code blocks (``pre``), display
  formulas (``div.math``) and the theme's table wrapper (``.pst-scrollable-table-container``);
* no raw markup in the rendered text (reST roles such as ``:func:`…```, directive markers ``::``,
  ``.. name::``, Markdown fences, ``$$``); code blocks are left out of this check.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless Chromium installed")

DOCS = Path(__file__).resolve().parents[1] / "docs"
WIDTHS = (1280, 760)  # a desktop window, and one narrow enough for the theme's collapsed sidebars

HARNESS = r"""<!doctype html><html><body>
<iframe id="wide" style="border:0;height:900px"></iframe>
<iframe id="narrow" name="narrow" style="border:0;height:900px"></iframe>
<script>
var START = __START__, WIDTHS = __WIDTHS__;
var NAV = ".bd-header a, .bd-sidebar-primary a, .bd-sidebar-secondary a, .bd-breadcrumbs a, " +
          ".prev-next-area a, .bd-footer a, article a";
var BLOCKS = "div.math, .katex-display, table, pre, div.highlight, figure, img, dl.py > dt";
var SCROLLS = "pre, div.math, .pst-scrollable-table-container";
var RAW = [/:(func|class|meth|mod|attr|data|obj|exc|ref|doc|math):`/, /\w::(\s|$)/, /(^|\s)\.\. [\w-]+::/,
           /```/, /\$\$/];
var wide = document.getElementById("wide"), narrow = document.getElementById("narrow");
wide.style.width = WIDTHS[0] + "px";
narrow.style.width = WIDTHS[1] + "px";
var found = {pages: {}, links: {}};

function load(frame, go) {
  return new Promise(function (resolve) {
    frame.onload = function () { setTimeout(resolve, 50); };
    go();
  });
}
function text(el) { return (el.innerText || "").slice(0, 80).replace(/\s+/g, " "); }
function check(doc, width) {
  var out = [], article = doc.querySelector("article.bd-article");
  if (!article) return ["not a page of the site: " + text(doc.body)];
  var edge = article.getBoundingClientRect().right + 1;
  if (doc.documentElement.scrollWidth > doc.documentElement.clientWidth + 1)
    out.push("the page scrolls sideways at " + width + "px");
  article.querySelectorAll(BLOCKS).forEach(function (el) {
    if (!el.getClientRects().length) return;  // not displayed at this width
    if (el.parentElement.closest(SCROLLS)) return;  // inside a block that scrolls sideways: meant to
    var what = width + "px: " + el.tagName.toLowerCase() + "." + el.className + " '" + text(el) + "'";
    if (el.getBoundingClientRect().right > edge) out.push(what + " reaches past the text column");
    if (!el.matches(SCROLLS) && el.scrollWidth > el.clientWidth + 1 && el.clientWidth > 0)
      out.push(what + " is wider than its box (" + el.scrollWidth + " > " + el.clientWidth + ")");
  });
  article.querySelectorAll("span.math, div.math").forEach(function (el) {
    if (!el.querySelector(".katex")) out.push("formula not typeset: " + text(el));
  });
  var error = article.querySelector(".katex-error");
  if (error) out.push("KaTeX error: " + text(error));
  var prose = article.cloneNode(true);
  prose.querySelectorAll("pre, .highlight").forEach(function (el) { el.remove(); });
  var words = prose.textContent;
  RAW.forEach(function (re) {
    var m = words.match(re);
    if (m) out.push("raw markup " + re + ": '" + words.substr(Math.max(0, m.index - 30), 70) + "'");
  });
  return out;
}
function page(url) {
  return found.pages[url] = found.pages[url] || {title: "", problems: [], links: 0};
}
async function run() {
  // the wide frame opens each page (checked, its links read); each link is clicked there, opening in
  // the narrow frame, which must arrive at a page of the site (checked at the narrow width)
  var queue = [START], seen = {};
  seen[START] = true;
  await load(narrow, function () { narrow.src = START; });
  page(START).problems = check(narrow.contentDocument, WIDTHS[1]);
  while (queue.length) {
    var url = queue.shift();
    await load(wide, function () { wide.src = url; });
    var doc = wide.contentDocument, anchors = [];
    page(url).title = doc.title;
    page(url).problems = page(url).problems.concat(check(doc, WIDTHS[0]));
    doc.querySelectorAll(NAV).forEach(function (a) {
      var href = a.getAttribute("href");
      if (!href || href.startsWith("#") || /^(https?|mailto):/.test(href)) return;
      anchors.push(a);
      var target = a.href.split("#")[0];
      found.links[target] = (found.links[target] || 0) + 1;
    });
    page(url).links = anchors.length;
    for (var i = 0; i < anchors.length; i++) {
      var a = anchors[i], target = a.href.split("#")[0];
      if (seen[target]) continue;
      seen[target] = true;
      a.target = "narrow";
      await load(narrow, function () { a.click(); });
      var arrived = narrow.contentWindow.location.href.split("#")[0];
      if (arrived !== target || !narrow.contentDocument.querySelector("article.bd-article")) {
        page(target).problems.push("clicking " + target + " from " + url + " reached " + arrived + ": " +
                                   text(narrow.contentDocument.body));
        continue;
      }
      page(target).problems = check(narrow.contentDocument, WIDTHS[1]);
      queue.push(target);
    }
  }
  var pre = document.createElement("pre");
  pre.id = "__result";
  pre.textContent = JSON.stringify(found);
  document.body.appendChild(pre);
}
run();
</script></body></html>"""


def click_through(site: Path, tmp: Path) -> dict:
    """Open ``site/index.html`` in the harness; what it found: {"pages": {url: …}, "links": {url: n}}."""
    harness = tmp / "harness.html"
    harness.write_text(HARNESS.replace("__START__", json.dumps((site / "index.html").as_uri()))
                       .replace("__WIDTHS__", json.dumps(WIDTHS)), encoding="utf-8")
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-web-security",
           "--allow-file-access-from-files", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
           f"--user-data-dir={tmp / 'profile'}", "--window-size=1400,1000", "--virtual-time-budget=120000",
           "--dump-dom", harness.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=180).stdout
    found = re.search(r'<pre id="__result">(.*?)</pre>', dom, flags=re.S)
    assert found, f"the harness did not report; the browser said: {dom[-800:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
                      .replace("&amp;", "&"))


def test_every_page_opens_from_disk_and_reads_right(docs_site, tmp_path):
    site = docs_site
    found = click_through(site, tmp_path)
    pages = {Path(u.removeprefix("file://")).relative_to(site).as_posix(): p
             for u, p in found["pages"].items()}
    sources = {p.relative_to(DOCS).with_suffix(".html").as_posix() for p in DOCS.rglob("*.md")}
    assert sources <= set(pages), f"pages the navigation does not reach: {sorted(sources - set(pages))}"
    folders = [u for u in found["links"] if not u.endswith(".html")]
    assert folders == [], f"links that are not pages: {folders}"
    problems = {name: p["problems"] for name, p in pages.items() if p["problems"]}
    assert problems == {}, json.dumps(problems, indent=1, ensure_ascii=False)


def test_the_click_through_catches_folders_overflow_and_raw_markup(tmp_path):
    """The checks can fail: a folder link, a table wider than the column, a formula left as TeX, a role."""
    bad = tmp_path / "bad"
    (bad / "sub").mkdir(parents=True)
    page = ('<html><head><title>{t}</title></head><body><div class="bd-header"><a href="sub/">folder</a>'
            '<a href="wide.html">wide</a></div>'
            '<article class="bd-article" style="width:400px">{body}</article></body></html>')
    (bad / "index.html").write_text(page.format(t="home", body="<p>fine</p>"), encoding="utf-8")
    (bad / "wide.html").write_text(page.format(
        t="wide", body='<table><tr><td style="white-space:nowrap">' + "x" * 300 + '</td></tr></table>'
        '<p>see :func:`gradest.register` and implements::</p>\n<span class="math">\\(a\\)</span>'),
        encoding="utf-8")
    found = click_through(bad, tmp_path)
    problems = "\n".join(p for page in found["pages"].values() for p in page["problems"])
    assert "sub/" in problems and "reached" in problems                # the folder link
    assert "reaches past the text column" in problems                 # the wide table
    assert ":(func|class" in problems and "\\w::" in problems           # the role and the stray marker
    assert "formula not typeset" in problems
