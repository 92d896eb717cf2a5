"""The page at ``GET /``: the endpoints, and a console that talks to one from the browser."""

from __future__ import annotations

from html import escape

from .endpoints import Scan

SERVICE_PATH = "/websockets/v4/service/"

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>polysocket endpoints</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem;max-width:60rem}
code,pre{background:#f4f4f4;padding:.1rem .3rem}
#log{height:16rem;overflow:auto;border:1px solid #ccc;padding:.5rem;white-space:pre-wrap}
.problem{color:#a00}
</style></head><body>
<h1>polysocket endpoints</h1>
<table><thead><tr><th>endpoint</th><th>description</th><th>URL</th></tr></thead>
<tbody>{rows}</tbody></table>
{problems}
<h2>Console</h2>
<p><select id="endpoint">{options}</select>
<input id="token" type="password" placeholder="token (if the server asks)" size="24">
<button id="connect">Connect</button> <button id="disconnect">Disconnect</button></p>
<p><input id="message" size="50" value="hello"> <button id="send">Send</button></p>
<div id="log"></div>
<script>
const log = (line) => {
  const el = document.getElementById("log");
  el.textContent += line + "\\n";
  el.scrollTop = el.scrollHeight;
};
let ws = null;
document.getElementById("connect").onclick = () => {
  const name = document.getElementById("endpoint").value;
  const token = document.getElementById("token").value;
  // a browser cannot set Authorization on a WebSocket: the token goes in the query
  const query = token ? `?access_token=${encodeURIComponent(token)}` : "";
  ws = new WebSocket(`ws://${location.host}{service}${name}${query}`);
  ws.onopen = () => log(`open: ${name}`);
  ws.onmessage = (event) => log(`message: ${event.data}`);
  ws.onerror = () => log("error");
  ws.onclose = (event) => log(`close: ${event.code} ${event.reason}`);
};
document.getElementById("disconnect").onclick = () => ws && ws.close();
document.getElementById("send").onclick = () => {
  const text = document.getElementById("message").value;
  if (ws) { ws.send(text); log(`sent: ${text}`); }
};
</script>
</body></html>
"""


def render(scan: Scan, debug: bool = False) -> bytes:
    """The page: endpoint names, descriptions and URLs (never handlers or files); descriptor
    problems in full in debug mode (their texts may name files), else only how many."""
    rows = "".join(
        f"<tr><td>{escape(e.name)}</td><td>{escape(e.description)}</td>"
        f"<td><code>{SERVICE_PATH}{escape(e.name)}</code></td></tr>"
        for e in scan.endpoints.values()
    )
    options = "".join(
        f'<option value="{escape(name)}">{escape(name)}</option>' for name in scan.endpoints
    )
    problems = ""
    if scan.problems and not debug:
        problems = (
            f'<p class="problem">{len(scan.problems)} descriptor problem(s): see the server'
            " log, or start the server with --debug to list them here.</p>"
        )
    elif scan.problems:
        items = "".join(f"<li>{escape(str(p))}</li>" for p in scan.problems)
        problems = f'<h2 class="problem">Descriptor problems</h2><ul class="problem">{items}</ul>'
    page = (
        _TEMPLATE.replace("{rows}", rows)
        .replace("{options}", options)
        .replace("{problems}", problems)
        .replace("{service}", SERVICE_PATH)
    )
    return page.encode()
