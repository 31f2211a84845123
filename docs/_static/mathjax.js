// MathJax for pymdownx.arithmatex (generic mode): render \(...\) and \[...\], re-typeset on
// Material's instant navigation. MathJax itself is served from the site (_static/mathjax/tex-svg.js,
// put there by docs/_hooks/offline.py), never from a CDN: the math renders without the internet.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};

document$.subscribe(() => {
  MathJax.startup.output.clearCache();
  MathJax.typesetClear();
  MathJax.texReset();
  MathJax.typesetPromise();
});
