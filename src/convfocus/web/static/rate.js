// convfocus rating workbench: one patch at a time, labels saved one by one.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const ZOOMS = [0.5, 1, 2, 3, 4, 6, 8];
  const state = { rater: null, index: 0, total: 0, label: null, next: null, zoom: "fit",
                  busy: false };

  async function api(path, body) {
    const opts = body === undefined ? {} : {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    };
    const res = await fetch(path, opts);
    let data = {};
    try { data = await res.json(); } catch (e) { data = {}; }
    if (!res.ok) throw new Error(data.error || `request failed (${res.status})`);
    return data;
  }

  function setStatus(text, cls) {
    const el = $("status");
    el.textContent = text;
    el.className = "status" + (cls ? " " + cls : "");
  }

  function showProgress(p) {
    state.total = p.total;
    $("progress-count").textContent = `${p.done} / ${p.total} labelled`;
    $("progress-fill").style.width = `${p.total ? (100 * p.done) / p.total : 0}%`;
    $("done").classList.toggle("hidden", p.done < p.total);
  }

  function applyZoom() {
    const img = $("patch");
    if (!img.naturalWidth) return;
    const vp = $("viewport");
    let scale;
    if (state.zoom === "fit") {
      scale = Math.min((vp.clientWidth - 24) / img.naturalWidth,
                       (vp.clientHeight - 24) / img.naturalHeight);
    } else {
      scale = state.zoom / (window.devicePixelRatio || 1);  // device pixels per image pixel
    }
    img.style.width = `${Math.round(img.naturalWidth * scale)}px`;
    img.style.height = `${Math.round(img.naturalHeight * scale)}px`;
    img.classList.toggle("pixelated", state.zoom !== "fit" && state.zoom >= 2);
    document.querySelectorAll("[data-zoom]").forEach((b) => {
      b.classList.toggle("on", String(state.zoom) === b.dataset.zoom);
    });
    const shown = state.zoom === "fit" ? scale * (window.devicePixelRatio || 1) : state.zoom;
    $("zoom-text").textContent = `${Math.round(shown * 100)} %`;
  }

  function setZoom(z) { state.zoom = z; applyZoom(); }

  function stepZoom(dir) {
    const img = $("patch");
    const cur = state.zoom === "fit"
      ? (parseFloat(img.style.width) / img.naturalWidth) * (window.devicePixelRatio || 1)
      : state.zoom;
    const next = dir > 0 ? ZOOMS.find((z) => z > cur + 1e-6) : [...ZOOMS].reverse()
      .find((z) => z < cur - 1e-6);
    if (next !== undefined) setZoom(next);
  }

  function showLabel(label) {
    state.label = label;
    document.querySelectorAll("#labels button").forEach((b) => {
      b.classList.toggle("chosen", b.dataset.label === label);
    });
    $("patch-label").textContent = label || "not yet labelled";
  }

  async function load(i) {
    const s = await api(`/api/state?rater=${encodeURIComponent(state.rater)}&i=${i}`);
    state.index = s.index;
    state.next = s.next_unlabelled;
    showProgress(s);
    showLabel(s.label);
    $("patch-name").textContent = s.name;
    $("patch-index").textContent = `${s.index + 1} of ${s.total}`;
    const img = $("patch");
    img.dataset.index = String(s.index);
    img.onload = applyZoom;
    img.src = s.url;
    $("prev").disabled = s.index === 0;
    $("next").disabled = s.index >= s.total - 1;
    $("next-open").disabled = s.next_unlabelled === null;
  }

  async function label(name) {
    if (!state.rater || state.busy) return;
    state.busy = true;
    setStatus("Saving…");
    try {
      const r = await api("/api/label", { rater: state.rater, index: state.index, label: name });
      showLabel(r.label);
      showProgress(r);
      setStatus(`Saved patch ${r.index + 1}: ${r.label}`, "ok");
      const after = await api(
        `/api/state?rater=${encodeURIComponent(state.rater)}&i=${state.index}`);
      if (after.next_unlabelled !== null) await load(after.next_unlabelled);
      else showProgress(after);
    } catch (e) {
      setStatus(`Not saved: ${e.message}`, "error");
    } finally {
      state.busy = false;
    }
  }

  async function start(name) {
    $("login-error").textContent = "";
    try {
      const p = await api("/api/session", { rater: name });
      state.rater = p.rater;
      try { localStorage.setItem("convfocus.rater", p.rater); } catch (e) { /* private mode */ }
      $("who").textContent = `Rater: ${p.rater}`;
      ["who", "switch", "progress"].forEach((id) => $(id).classList.remove("hidden"));
      $("login-view").classList.add("hidden");
      $("rate-view").classList.remove("hidden");
      await load(p.first_unlabelled === null ? 0 : p.first_unlabelled);
      setStatus(p.done ? `Welcome back: ${p.done} already labelled.` : "");
    } catch (e) {
      $("login-error").textContent = e.message;
    }
  }

  function bind() {
    try { $("rater").value = localStorage.getItem("convfocus.rater") || ""; } catch (e) { /**/ }
    $("login").addEventListener("submit", (ev) => { ev.preventDefault(); start($("rater").value); });
    $("switch").addEventListener("click", () => { location.reload(); });
    document.querySelectorAll("#labels button").forEach((b) => {
      b.addEventListener("click", () => { b.blur(); label(b.dataset.label); });
    });
    document.querySelectorAll("[data-zoom]").forEach((b) => {
      b.addEventListener("click", () => {
        setZoom(b.dataset.zoom === "fit" ? "fit" : Number(b.dataset.zoom));
      });
    });
    $("prev").addEventListener("click", () => load(Math.max(0, state.index - 1)));
    $("next").addEventListener("click", () => load(Math.min(state.total - 1, state.index + 1)));
    $("next-open").addEventListener("click", () => { if (state.next !== null) load(state.next); });
    window.addEventListener("resize", applyZoom);

    const vp = $("viewport");
    vp.addEventListener("wheel", (ev) => {
      if (!state.rater) return;
      ev.preventDefault();
      stepZoom(ev.deltaY < 0 ? 1 : -1);
    }, { passive: false });
    let drag = null;
    vp.addEventListener("mousedown", (ev) => {
      drag = { x: ev.clientX, y: ev.clientY, l: vp.scrollLeft, t: vp.scrollTop };
      vp.classList.add("dragging");
    });
    window.addEventListener("mouseup", () => { drag = null; vp.classList.remove("dragging"); });
    window.addEventListener("mousemove", (ev) => {
      if (!drag) return;
      vp.scrollLeft = drag.l - (ev.clientX - drag.x);
      vp.scrollTop = drag.t - (ev.clientY - drag.y);
    });

    document.addEventListener("keydown", (ev) => {
      if (!state.rater || ev.ctrlKey || ev.metaKey || ev.altKey) return;
      if (ev.target instanceof HTMLInputElement) return;
      const k = ev.key.toLowerCase();
      const keys = {
        i: () => label("in-focus"), 1: () => label("in-focus"),
        o: () => label("out-focus"), 2: () => label("out-focus"),
        u: () => label("undecided"), 3: () => label("undecided"),
        arrowleft: () => { if (state.index > 0) load(state.index - 1); },
        arrowright: () => { if (state.index < state.total - 1) load(state.index + 1); },
        n: () => { if (state.next !== null) load(state.next); },
        z: () => setZoom(state.zoom === "fit" ? 1 : "fit"),
        f: () => setZoom("fit"),
        "+": () => stepZoom(1), "=": () => stepZoom(1), "-": () => stepZoom(-1),
      };
      if (keys[k]) { ev.preventDefault(); keys[k](); }
    });
  }

  bind();
})();
