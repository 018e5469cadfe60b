// Image viewer keys: arrows and Page Up/Down move through images and frames, Home/End, 1-5 choose a window.
(function () {
  "use strict";
  var keys = { ArrowLeft: "prev-image", PageUp: "prev-image", ArrowRight: "next-image", PageDown: "next-image",
               ArrowUp: "prev-frame", ArrowDown: "next-frame", Home: "first-image", End: "last-image" };
  document.addEventListener("keydown", function (event) {
    var tag = (event.target && event.target.tagName) || "";
    if (event.altKey || event.ctrlKey || event.metaKey || /^(INPUT|SELECT|TEXTAREA|BUTTON)$/.test(tag)) { return; }
    var id = keys[event.key];
    if (id) {
      var link = document.getElementById(id);
      if (link) { event.preventDefault(); window.location.assign(link.href); }
      return;
    }
    var select = document.getElementById("preset");
    if (select && /^[1-9]$/.test(event.key)) {
      var option = select.querySelector('option[data-key="' + event.key + '"]');
      if (option) { event.preventDefault(); select.value = option.value; select.form.submit(); }
    }
  });
})();
