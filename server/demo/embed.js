// Backchannel demo widget, embeddable with one tag:
//   <script src="http://HOST/demo/widget.js" async></script>
// adds a chat bubble at the bottom right of the page; it opens the chat (the
// /demo/widget page of the same server) in a frame. Styles are set through the DOM, not
// a <style> element, so a host page's Content-Security-Policy does not block them.
(function () {
  'use strict';
  if (window.__backchannelWidget) return;
  window.__backchannelWidget = true;
  var script = document.currentScript;
  var origin = script && script.src ? new URL(script.src).origin : location.origin;

  var CHAT = 'M4 3h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H10l-5 4v-4H4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2zm3 6a1.3 1.3 0 1 0 0 2.6A1.3 1.3 0 0 0 7 9zm5 0a1.3 1.3 0 1 0 0 2.6A1.3 1.3 0 0 0 12 9zm5 0a1.3 1.3 0 1 0 0 2.6A1.3 1.3 0 0 0 17 9z';
  var CLOSE = 'M6.4 5L12 10.6 17.6 5 19 6.4 13.4 12l5.6 5.6-1.4 1.4L12 13.4 6.4 19 5 17.6 10.6 12 5 6.4z';

  function glyph(d) {
    var ns = 'http://www.w3.org/2000/svg';
    var svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('width', '28');
    svg.setAttribute('height', '28');
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('fill', 'currentColor');
    var path = document.createElementNS(ns, 'path');
    path.setAttribute('d', d);
    svg.appendChild(path);
    return svg;
  }

  function style(node, rules) {
    for (var key in rules) node.style[key] = rules[key];
  }

  function mount() {
    var frame = document.createElement('iframe');
    frame.title = 'Support chat';
    frame.setAttribute('allow', 'clipboard-write');
    style(frame, {
      position: 'fixed', right: '20px', bottom: '92px', width: '380px', height: '560px',
      maxWidth: 'calc(100vw - 40px)', maxHeight: 'calc(100vh - 120px)', border: '0',
      borderRadius: '16px', boxShadow: '0 18px 60px rgba(30, 27, 75, 0.3)', background: '#fff',
      zIndex: '2147483000', display: 'none',
    });

    var button = document.createElement('button');
    button.type = 'button';
    button.setAttribute('aria-label', 'Chat with support');
    button.setAttribute('aria-expanded', 'false');
    button.appendChild(glyph(CHAT));
    style(button, {
      position: 'fixed', right: '20px', bottom: '20px', width: '60px', height: '60px',
      borderRadius: '50%', border: '0', cursor: 'pointer', color: '#fff', display: 'grid', placeItems: 'center',
      background: 'linear-gradient(135deg, #4338ca, #7c3aed)',
      boxShadow: '0 8px 24px rgba(67, 56, 202, 0.45)', zIndex: '2147483001',
    });

    var open = false;
    function toggle(next) {
      open = next;
      if (open && !frame.src) frame.src = origin + '/demo/widget?embed=1';
      frame.style.display = open ? 'block' : 'none';
      button.setAttribute('aria-expanded', String(open));
      button.setAttribute('aria-label', open ? 'Close the support chat' : 'Chat with support');
      button.replaceChildren(glyph(open ? CLOSE : CHAT));
      if (open) frame.focus();
    }
    button.addEventListener('click', function () { toggle(!open); });
    document.addEventListener('keydown', function (event) {
      if (event.key === 'Escape' && open) { toggle(false); button.focus(); }
    });
    document.body.appendChild(frame);
    document.body.appendChild(button);
  }

  if (document.body) mount();
  else document.addEventListener('DOMContentLoaded', mount);
})();
