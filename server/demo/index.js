// The index page: shows the embed snippet with this server's address.
const snippet = document.getElementById('snippet');
if (snippet) snippet.textContent = `<script src="${location.origin}/demo/widget.js" async></script>`;
