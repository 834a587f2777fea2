/* global QKVViews */
// The page of one notebook view: draws the view that #view's data-kind names from the embedded data.
(function () {
  const box = document.getElementById("view");
  const data = JSON.parse(document.getElementById("view-data").textContent);
  if (box.getAttribute("data-kind") === "head") QKVViews.headView(box, data);
  else QKVViews.modelView(box, data, { selected: data.selected });
  document.body.setAttribute("data-ready", "true");
})();
