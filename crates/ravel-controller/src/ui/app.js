// ravel web UI: live updates from the event stream, the job page's output tail and actions.
"use strict";
(function () {
  const say = (text) => { document.getElementById("status").textContent = text; };
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const stateOf = (e) => (e.held && !["succeeded", "failed", "canceled", "lost"].includes(e.state) ? "held" : e.state);

  function setState(span, state) {
    span.textContent = state;
    span.dataset.state = state;
    span.className = "state s-" + state;
  }

  // Jobs table: rows change state in place; new jobs appear on top of the first page.
  const table = document.getElementById("jobs");
  // The newest event of each job: a row fetched for a new job may be older than events that
  // arrived while it was fetched, and is brought up to date with them.
  const latest = new Map();
  const adding = new Set();
  async function addRow(id) {
    if (adding.has(id)) return;
    adding.add(id);
    const r = await fetch("/v1/jobs/" + id, { credentials: "same-origin" });
    adding.delete(id);
    if (!r.ok || document.getElementById("job-" + id)) return;
    const v = await r.json();
    const what = v.spec.name || v.spec.command.join(" ");
    const tr = document.createElement("tr");
    tr.id = "job-" + id;
    tr.innerHTML = '<td><a href="/jobs/' + id + '">' + id + "</a></td><td>" + esc(v.spec.user || "-") +
      '</td><td class="what">' + esc(what) + '</td><td><span class="state"></span></td><td class="opt">' +
      esc(v.gpus_assigned.length ? v.gpus_assigned.join(",") : v.spec.gpus ? "(" + v.spec.gpus + ")" : "-") +
      '</td><td class="opt"><time>' + new Date(v.submitted_at).toISOString().slice(0, 19) + 'Z</time></td><td class="opt info">' +
      esc(v.pending_reason || "") + "</td>";
    setState(tr.querySelector(".state"), stateOf(latest.get(id) || v));
    table.tBodies[0].prepend(tr);
  }

  // Job page: its state field and buttons follow the events.
  const actions = document.querySelector(".actions[data-job]");
  const jobId = actions ? Number(actions.dataset.job) : null;

  function onEvent(e) {
    latest.set(e.job, e);
    if (table) {
      const tr = document.getElementById("job-" + e.job);
      if (tr) {
        setState(tr.querySelector(".state"), stateOf(e));
        const info = tr.querySelector(".info");
        if (info && (e.reason || e.exit_code != null)) info.textContent = e.reason || "exit " + e.exit_code;
      } else if (table.dataset.live === "true") {
        addRow(e.job);
      }
    }
    if (jobId === e.job) {
      const st = document.getElementById("state");
      if (st) st.textContent = e.state;
      const done = ["succeeded", "failed", "canceled", "lost"].includes(e.state);
      const cancel = document.querySelector('[data-action="cancel"]');
      const retry = document.querySelector('[data-action="retry"]');
      if (cancel) cancel.disabled = done;
      if (retry) retry.disabled = !done;
      if (!done && following === false) follow();
    }
  }

  if (table || jobId !== null) {
    // EventSource reconnects by itself and sends Last-Event-ID: nothing is missed.
    const es = new EventSource("/v1/events");
    es.addEventListener("job", (m) => onEvent(JSON.parse(m.data)));
    es.addEventListener("reset", () => { if (table) location.reload(); });
  }

  // The output of the job, streamed by the daemon as it is written.
  const log = document.getElementById("log");
  let following = false;
  let offset = 0;
  async function follow() {
    if (!log || following) return;
    following = true;
    try {
      const r = await fetch("/v1/jobs/" + log.dataset.job + "/logs?follow=true&stream=stdout&offset=" + offset, { credentials: "same-origin" });
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        offset += value.length;
        log.textContent += dec.decode(value, { stream: true });
        if (log.textContent.length > 200000) log.textContent = log.textContent.slice(-100000);
        log.scrollTop = log.scrollHeight;
      }
    } catch (err) {
      say("output: " + err);
    }
    following = false;
  }
  follow();

  for (const b of document.querySelectorAll("[data-action]")) {
    b.addEventListener("click", async () => {
      const id = Number(b.closest("[data-job]").dataset.job);
      const req = b.dataset.action === "cancel"
        ? fetch("/v1/jobs/cancel", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ ids: [id] }) })
        : fetch("/v1/jobs/" + id + "/retry", { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
      const r = await req;
      const body = await r.json().catch(() => ({}));
      say(r.ok ? "job " + id + ": " + b.dataset.action + " asked" : "job " + id + ": " + (body.error || r.status));
    });
  }
})();
