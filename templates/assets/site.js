/* reportgen site script: keyboard navigation, lightbox, overlay switch, image index.
   Plain JavaScript, no dependency, works from file://. */
(function () {
  "use strict";

  document.documentElement.classList.add("js");

  var zoomables = Array.prototype.slice.call(document.querySelectorAll("img.zoomable"));
  var lightbox = null;
  var lightboxImage = null;
  var lightboxCaption = null;
  var lightboxClose = null;
  var current = -1;
  var opener = null;

  function isTyping(target) {
    return target && (target.isContentEditable || /^(INPUT|SELECT|TEXTAREA)$/.test(target.tagName));
  }

  /* ---------------------------------------------------------------- lightbox */

  function buildLightbox() {
    lightbox = document.createElement("div");
    lightbox.className = "lightbox";
    lightbox.hidden = true;
    lightbox.setAttribute("role", "dialog");
    lightbox.setAttribute("aria-modal", "true");
    lightbox.setAttribute("aria-label", "Enlarged figure");
    var figure = document.createElement("figure");
    lightboxImage = document.createElement("img");
    lightboxImage.alt = "";
    lightboxCaption = document.createElement("figcaption");
    figure.appendChild(lightboxImage);
    figure.appendChild(lightboxCaption);
    lightboxClose = document.createElement("button");
    lightboxClose.type = "button";
    lightboxClose.className = "lightbox-close";
    lightboxClose.setAttribute("aria-label", "Close enlarged figure");
    lightboxClose.textContent = "\u00d7";
    lightbox.appendChild(figure);
    lightbox.appendChild(lightboxClose);
    lightbox.addEventListener("click", function (event) {
      if (event.target !== lightboxCaption) {
        closeLightbox();
      }
    });
    document.body.appendChild(lightbox);
  }

  function show(index) {
    var image = zoomables[index];
    current = index;
    lightboxImage.src = image.currentSrc || image.src;
    lightboxImage.alt = image.alt;
    lightboxCaption.textContent = image.alt;
  }

  function openLightbox(image) {
    if (!lightbox) {
      buildLightbox();
    }
    opener = image;
    show(zoomables.indexOf(image));
    lightbox.hidden = false;
    lightboxClose.focus();
  }

  function closeLightbox() {
    if (!lightbox || lightbox.hidden) {
      return;
    }
    lightbox.hidden = true;
    lightboxImage.removeAttribute("src");
    if (opener) {
      opener.focus();
    }
  }

  zoomables.forEach(function (image) {
    image.tabIndex = 0;
    image.addEventListener("click", function () {
      openLightbox(image);
    });
    image.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        openLightbox(image);
      }
    });
  });

  /* ---------------------------------------------------------------- keyboard */

  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) {
      return;
    }
    if (lightbox && !lightbox.hidden) {
      if (event.key === "Escape") {
        event.preventDefault();
        closeLightbox();
      } else if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
        event.preventDefault();
        var step = event.key === "ArrowRight" ? 1 : -1;
        show((current + step + zoomables.length) % zoomables.length);
      }
      return;
    }
    if (isTyping(event.target)) {
      return;
    }
    var rel = event.key === "ArrowRight" ? "next" : event.key === "ArrowLeft" ? "prev" : null;
    var link = rel && document.querySelector('a[rel="' + rel + '"]');
    if (link) {
      event.preventDefault();
      window.location.href = link.href;
    }
  });

  /* ---------------------------------------------------------------- overlay switch */

  Array.prototype.forEach.call(document.querySelectorAll(".variant-switch"), function (group) {
    var section = group.closest("section") || document;
    group.addEventListener("click", function (event) {
      var button = event.target.closest("button[data-variant]");
      if (!button) {
        return;
      }
      var key = button.getAttribute("data-variant");
      Array.prototype.forEach.call(group.querySelectorAll("button"), function (other) {
        other.setAttribute("aria-pressed", other === button ? "true" : "false");
      });
      Array.prototype.forEach.call(section.querySelectorAll("img[data-src-" + key + "]"), function (image) {
        image.src = image.getAttribute("data-src-" + key);
        image.alt = image.getAttribute("data-alt-" + key);
      });
    });
  });

  /* ---------------------------------------------------------------- image index */

  var gallery = document.getElementById("gallery");
  if (gallery) {
    var items = Array.prototype.slice.call(gallery.children);
    var sortSelect = document.getElementById("gallery-sort");
    var boxes = Array.prototype.slice.call(document.querySelectorAll('.verdict-filter input[name="verdict"]'));
    var count = document.getElementById("gallery-count");

    var order = function (a, b) {
      return Number(a.dataset.order) - Number(b.dataset.order);
    };
    var dice = function (item) {
      return item.dataset.dice === "" ? null : Number(item.dataset.dice);
    };
    var byDice = function (sign) {
      return function (a, b) {
        var x = dice(a);
        var y = dice(b);
        if (x === null || y === null) {
          return (x === null) - (y === null) || order(a, b);
        }
        return sign * (x - y) || order(a, b);
      };
    };
    var comparators = {
      order: order,
      verdict: function (a, b) {
        return Number(a.dataset.verdictRank) - Number(b.dataset.verdictRank) || order(a, b);
      },
      "verdict-best": function (a, b) {
        return Number(a.dataset.verdictBest) - Number(b.dataset.verdictBest) || order(a, b);
      },
      "dice-asc": byDice(1),
      "dice-desc": byDice(-1),
      name: function (a, b) {
        return a.dataset.name.localeCompare(b.dataset.name) || order(a, b);
      }
    };

    var update = function () {
      var comparator = comparators[sortSelect.value] || order;
      var allowed = {};
      boxes.forEach(function (box) {
        allowed[box.value] = box.checked;
      });
      var shown = 0;
      items.slice().sort(comparator).forEach(function (item) {
        gallery.appendChild(item);
        item.hidden = !allowed[item.dataset.verdict];
        shown += item.hidden ? 0 : 1;
      });
      count.textContent = shown + " of " + items.length + " images shown";
    };

    sortSelect.addEventListener("change", update);
    boxes.forEach(function (box) {
      box.addEventListener("change", update);
    });
    update();
  }
})();
