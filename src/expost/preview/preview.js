// expost preview: the live panel of a post page (and of the index), fed by /events.
// A new render replaces the page's <article> in place (no reload): the reader's scroll position
// stays where it was. Errors show above the last good render; claims show their verdict, k of n.
(() => {
  "use strict";
  const script = document.currentScript;
  const token = encodeURIComponent(script.dataset.token);
  const panel = document.getElementById("expost-preview");
  const post = panel.dataset.post || null;
  let shown = Number(panel.dataset.gen || 0);
  let loading = false;

  const el = (tag, attrs = {}, text = "") => {
    const e = document.createElement(tag);
    Object.entries(attrs).forEach(([k, v]) => e.setAttribute(k, v));
    if (text) e.textContent = text;
    return e;
  };
  const style = el("style", {}, `
    #expost-preview { position: sticky; top: 0; z-index: 10; background: #fffbe6; border-bottom: 1px solid #e0d7a8;
      font: 14px/1.4 system-ui, sans-serif; padding: .4rem .8rem; margin: 0 0 1rem; }
    #expost-preview pre { white-space: pre-wrap; color: #a00; background: #fff0f0; margin: .4rem 0; padding: .4rem;
      font: 13px/1.35 ui-monospace, monospace; max-height: 40vh; overflow: auto; }
    #expost-preview details { margin-top: .2rem; } #expost-preview ul { margin: .2rem 0; padding-left: 1.2rem; }
    #expost-preview .holds { color: #075; } #expost-preview .fails { color: #a00; }
    #expost-preview .inconclusive, #expost-preview .error { color: #a60; }
    #expost-preview .verdict { font-weight: 600; margin-right: .4em; }
    #expost-preview .numbers { color: #666; margin-left: .6em; font-size: 90%; }`);
  document.head.appendChild(style);
  const status = el("div", { id: "expost-status" }, "connecting...");
  const error = el("pre", { id: "expost-error", hidden: "" });
  const claims = el("details", { id: "expost-claims", open: "" });  // open: each verdict in view
  panel.replaceChildren(status, error, claims);
  document.body.prepend(panel);
  document.body.dataset.gen = String(shown);

  function progressText(p) {
    if (!p.busy) return "up to date";
    if (!p.total) return "checking...";
    const running = p.running.length ? ` | in progress: ${p.running.slice(0, 4).join(", ")}` +
      (p.running.length > 4 ? ` and ${p.running.length - 4} more` : "") : "";
    const failed = p.failed ? `, ${p.failed} failed` : "";
    return `running: ${p.done} of ${p.total} runs done${failed}${running}`;
  }

  function showClaims(list) {
    const counts = {};
    list.forEach(c => { counts[c.verdict] = (counts[c.verdict] || 0) + 1; });
    const summary = el("summary", {}, list.length ? "Claims: " + Object.entries(counts)
      .map(([v, n]) => `${n} ${v}`).join(", ") : "No claims");
    const ul = el("ul");
    list.forEach(c => {
      // As `expost check` counts: k of n seeds for a per-seed claim, else one verdict over all seeds.
      const count = c.per_seed ? `${c.k}/${c.n} seeds` +
        (c.min_frac < 1 ? ` (needs ${Math.round(c.min_frac * 100)}%)` : "") : `over all ${c.n_seeds} seeds together`;
      const missing = c.missing ? `, ${c.missing} seed(s) missing` : "";
      const li = el("li", { class: "claim" });
      li.append(el("span", { class: `verdict ${c.verdict}` }, `${c.verdict} ${count}${missing}`),
                document.createTextNode(`${c.experiment}: ${c.claim}${c.group ? " [" + c.group + "]" : ""}` +
                                        (c.xfail ? ` (expected to fail: ${c.xfail})` : "")),
                el("span", { class: "numbers" }, c.numbers || c.detail || ""));
      ul.append(li);
    });
    const open = claims.open;
    claims.replaceChildren(summary, ul);
    claims.open = open;
  }

  function showIndex(s) {
    const ul = document.getElementById("posts");
    ul.replaceChildren(...Object.entries(s.posts).map(([name, p]) => {
      const li = el("li");
      const a = el("a", { href: "/post/" + encodeURIComponent(name) }, name);
      const held = p.claims.filter(c => c.verdict === "holds").length;
      li.append(a, el("span", { class: "status" }, p.error ? "error" : (p.gen ? "rendered" : "waiting")),
                el("span", { class: "claims" }, `${held} of ${p.claims.length} claim results hold`));
      return li;
    }));
  }

  async function swap(gen) {
    if (loading) return;
    loading = true;
    try {
      const r = await fetch(`/post/${encodeURIComponent(post)}/page?token=${token}`, { cache: "no-store" });
      if (!r.ok) return;
      const got = Number(r.headers.get("X-Expost-Gen"));
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      const fresh = doc.querySelector("article");
      const old = document.querySelector("article");
      if (!fresh || !old) { location.reload(); return; }
      const y = window.scrollY;
      old.replaceWith(document.importNode(fresh, true));
      if (doc.title) document.title = doc.title;
      window.scrollTo(0, y);
      shown = got;
      document.body.dataset.gen = String(got);
      document.dispatchEvent(new CustomEvent("expost:updated", { detail: { gen: got } }));
    } finally {
      loading = false;
    }
    if (latest > shown) swap(latest);
  }

  let latest = shown;
  const events = new EventSource(`/events?token=${token}`);
  events.onmessage = (ev) => {
    const s = JSON.parse(ev.data);
    document.body.dataset.version = String(s.version);
    if (!post) { showIndex(s); status.textContent = progressText(s.progress); }
    const p = post ? s.posts[post] : null;
    const problem = s.error || (p && p.error);
    error.hidden = !problem;
    error.textContent = problem || "";
    if (!p) return;
    status.textContent = progressText(s.progress);
    showClaims(p.claims);
    latest = p.gen;
    if (p.gen > shown) swap(p.gen);
  };
  events.onerror = () => { status.textContent = "disconnected from expost preview (is it still running?)"; };
})();
