// convfocus slide viewer: OpenSeadragon with the OOF class map as a second tiled image.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const OSD = window.OpenSeadragon;
  const st = { slide: null, colors: [], overlayOn: true, opacity: 0.45, probeSeq: 0,
               probeTimer: null, highlight: null };

  async function getJSON(url) {
    const res = await fetch(url);
    const data = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(data.error || `request failed (${res.status})`);
    return data;
  }

  const viewer = OSD({
    element: $("osd"),
    prefixUrl: "/static/vendor/openseadragon/images/",
    drawer: "canvas",  // 2D canvas: works without WebGL (headless, remote desktops)
    showNavigator: true,
    navigatorPosition: "BOTTOM_RIGHT",
    showRotationControl: false,
    maxZoomPixelRatio: 4,
    visibilityRatio: 0.5,
    gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
    crossOriginPolicy: false,
  });

  const base = () => viewer.world.getItemAt(0);
  const overlay = () => viewer.world.getItemAt(1);

  function applyOverlay() {
    const item = overlay();
    if (item) item.setOpacity(st.overlayOn ? st.opacity : 0);
    $("overlay-on").checked = st.overlayOn;
    $("opacity-text").textContent = `${Math.round(st.opacity * 100)} %`;
  }

  function fmt(v) {
    if (typeof v === "number") {
      if (Number.isInteger(v)) return v.toLocaleString("en");
      return Math.abs(v) < 1 ? v.toFixed(3) : v.toFixed(2);
    }
    if (typeof v === "boolean") return v ? "yes" : "no";
    return String(v);
  }

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const pct = (v) => `${(100 * v).toFixed(v > 0 && v < 0.01 ? 2 : 1)} %`;
  const obj = (v) => (v && typeof v === "object" && !Array.isArray(v) ? v : {});

  const PATTERNS = {
    none: "no out-of-focus tissue",
    local: "small scattered spots",
    regional: "one or more large regions",
    global: "most of the tissue",
  };

  function mppSource(src) {
    if (src === "metadata") return "from the slide file";
    if (src === "--mpp") return "given with --mpp";
    if (typeof src === "string" && src.startsWith("assumed")) return "assumed: none in the file";
    return typeof src === "string" ? src : "";
  }

  // [value, note] of the scan lanes; null when the summary does not say
  function lanes(p) {
    if (p.scan_lanes === undefined) return null;
    if (!p.scan_lanes) return ["none", ""];
    const dir = p.lane_direction === "horizontal" ? "horizontal" : "vertical";
    const px = Array.isArray(p.lane_positions_l0_px) && p.lane_positions_l0_px.length > 0;
    const spans = (px ? p.lane_positions_l0_px : p.lane_positions || [])
      .filter((ab) => Array.isArray(ab) && ab.length === 2)
      .map(([a, b]) => `${fmt(Math.round(a))}–${fmt(Math.round(b))}`).join(", ");
    if (!spans) return [`yes, ${dir}`, ""];
    const where = px ? (dir === "vertical" ? "at x " : "at y ")
      : (dir === "vertical" ? "grid columns " : "grid rows ");
    return [`yes, ${dir}`, `${where}${spans}${px ? " px" : ""}`];
  }

  // the rows under the verdict: OOF pattern and scan lanes first, then the key figures;
  // [label, value, note], the note a second, muted line under the value
  function summaryRows(s) {
    const rows = [];
    const add = (k, v, note = "") => { rows.push([k, v, note]); };
    const p = obj(s.pattern);
    if (typeof p.pattern === "string") add("OOF pattern", p.pattern, PATTERNS[p.pattern] || "");
    const l = lanes(p);
    if (l) add("Scan lanes", ...l);
    if (isNum(s.tissue_area_mm2)) add("Tissue area", `${s.tissue_area_mm2.toFixed(2)} mm²`);
    if (isNum(s.windows_graded)) add("Windows graded", fmt(s.windows_graded));
    // the share the verdict counts: summary.json's oof_share is at the verdict profile's class
    const v = obj(s.verdict);
    const oofShare = "oof_share" in s ? s.oof_share : p.oof_share;  // null: no tissue graded
    const minCls = isNum(s.oof_min_class) ? s.oof_min_class : p.oof_min_class;
    if (isNum(oofShare)) {
      const why = typeof v.profile === "string" ? `, as the ${v.profile} verdict counts` : "";
      add("Out of focus", `${pct(oofShare)} of tissue`, isNum(minCls) ? `class ≥ ${minCls}${why}` : "");
    }
    const regions = obj(s.regions);
    if (isNum(regions.count)) {
      add("OOF regions", fmt(regions.count), isNum(regions.min_class) ? `class ≥ ${regions.min_class}` : "");
    }
    if (isNum(s.mean_class)) add("Mean class", s.mean_class.toFixed(1));
    if (isNum(s.ink_area_mm2) && s.ink_area_mm2 > 0) {
      const share = isNum(s.ink_share) ? `${pct(s.ink_share)} of tissue + ink, ` : "";
      add("Ink", `${s.ink_area_mm2 < 0.1 ? s.ink_area_mm2.toPrecision(2) : s.ink_area_mm2.toFixed(2)} mm²`,
          `${share}not graded`);
    }
    if (isNum(s.mpp)) add("Pixel size", `${s.mpp} µm/px`, mppSource(s.mpp_source));
    const coarse = obj(s.coarse_slide);
    if (typeof coarse.note === "string" && isNum(coarse.sharp_floor_class)) {
      add("Coarse slide", `sharp tissue grades about class ${Math.round(coarse.sharp_floor_class)}`,
          coarse.note);
    }
    const m = obj(s.model);
    if (typeof m.name === "string") add("Model", m.name, m.version ? `version ${m.version}` : "");
    if (Array.isArray(s.dimensions) && s.dimensions.length === 2) {
      add("Slide size", `${fmt(s.dimensions[0])} × ${fmt(s.dimensions[1])} px`);
    }
    return rows;
  }

  function showVerdict(s) {
    const box = $("verdict-block");
    box.replaceChildren();
    const v = obj(s.verdict);
    if (typeof v.verdict !== "string") return;
    const head = document.createElement("div");
    head.className = "verdict-head";
    const badge = document.createElement("span");
    badge.className = `verdict v-${v.verdict}`;
    badge.id = "verdict";
    badge.textContent = v.verdict;
    head.append(badge);
    if (typeof v.profile === "string") {
      const prof = document.createElement("span");
      prof.className = "muted";
      prof.textContent = `for ${v.profile}`;
      head.append(prof);
    }
    box.append(head);
    const reasons = Array.isArray(v.reasons) ? v.reasons.filter((r) => typeof r === "string") : [];
    if (reasons.length) {
      const ul = document.createElement("ul");
      ul.className = "reasons";
      for (const r of reasons) {
        const li = document.createElement("li");
        li.textContent = r;
        ul.append(li);
      }
      box.append(ul);
    }
    const others = Object.entries(obj(s.verdicts))
      .filter(([k, x]) => k !== v.profile && typeof x === "string");
    if (others.length) {
      const o = document.createElement("div");
      o.className = "muted";
      o.textContent = `Other profiles: ${others.map(([k, x]) => `${k} ${x}`).join(" · ")}`;
      box.append(o);
    }
  }

  function showSummary(s) {
    showVerdict(s);
    const table = $("summary");
    table.replaceChildren();
    for (const [k, v, note] of summaryRows(s)) {
      const tr = document.createElement("tr");
      const a = document.createElement("td");
      const b = document.createElement("td");
      a.textContent = k;
      b.textContent = v;
      if (note) {
        const n = document.createElement("div");
        n.className = "note";
        n.textContent = note;
        b.append(n);
      }
      tr.append(a, b);
      table.append(tr);
    }
    $("pixels-note").textContent = s.pixels === "thumbnail"
      ? `${s.pixels_note || "slide file unavailable"}: showing the scan's thumbnail` : "";
  }

  function goToRegion(r, li) {
    const item = base();
    if (!item) return;
    const [x, y, w, h] = r.bbox;
    const pad = Math.max(w, h) * 0.35 + 200;
    const rect = item.imageToViewportRectangle(x - pad, y - pad, w + 2 * pad, h + 2 * pad);
    viewer.viewport.fitBoundsWithConstraints(rect);
    if (st.highlight) viewer.removeOverlay(st.highlight);
    const el = document.createElement("div");
    el.className = "region-box";
    el.style.border = "2px solid #fff";
    el.style.outline = "2px solid #111827";
    el.style.borderRadius = "3px";
    viewer.addOverlay({ element: el, location: item.imageToViewportRectangle(x, y, w, h) });
    st.highlight = el;
    document.querySelectorAll("#regions li").forEach((e) => e.classList.remove("active"));
    li.classList.add("active");
  }

  function showRegions(list) {
    const ol = $("regions");
    ol.replaceChildren();
    $("no-regions").classList.toggle("hidden", list.length > 0);
    list.slice(0, 50).forEach((r, i) => {
      const p = r.properties || {};
      const li = document.createElement("li");
      li.dataset.region = String(r.id);
      const sw = document.createElement("span");
      sw.className = "swatch";
      const cls = Math.round(p.mean_class ?? p.max_class ?? 0);
      sw.style.background = st.colors[Math.max(0, Math.min(st.colors.length - 1, cls))] || "#999";
      const what = document.createElement("span");
      what.className = "what";
      what.textContent = p.name || `Region ${i + 1}`;
      const meta = document.createElement("span");
      meta.className = "meta";
      const bits = [];
      if (typeof p.mean_class === "number") bits.push(`mean ${p.mean_class.toFixed(1)}`);
      if (typeof p.area_um2 === "number") bits.push(`${(p.area_um2 / 1e6).toFixed(3)} mm²`);
      meta.textContent = bits.join(" · ");
      li.append(sw, what, meta);
      li.addEventListener("click", () => goToRegion(r, li));
      ol.append(li);
    });
  }

  function showLegend() {
    const bar = $("legend-bar");
    bar.replaceChildren();
    st.colors.forEach((c, i) => {
      const s = document.createElement("span");
      s.style.background = c;
      s.title = `class ${i}`;
      bar.append(s);
    });
  }

  function showProbe(w) {
    const probs = $("probe-probs");
    probs.replaceChildren();
    if (w.class === null || w.class === undefined) {
      $("probe-class").textContent = w.outside ? "outside the slide" : "no tissue";
      $("probe-swatch").style.background = "transparent";
      $("probe-detail").textContent = w.row !== null && w.row !== undefined
        ? `window row ${w.row}, column ${w.col}` : "";
      return;
    }
    $("probe-class").textContent = `class ${w.class}`;
    $("probe-swatch").style.background = st.colors[w.class] || "#999";
    const parts = [`window row ${w.row}, column ${w.col}`];
    if (typeof w.expected_class === "number") parts.push(`expected ${w.expected_class.toFixed(1)}`);
    if (typeof w.confidence === "number") parts.push(`p = ${w.confidence.toFixed(2)}`);
    $("probe-detail").textContent = parts.join(" · ");
    const p = w.probabilities || [];
    const top = Math.max(1e-6, ...p);
    p.forEach((v, i) => {
      const s = document.createElement("span");
      s.style.height = `${Math.max(1, (100 * v) / top)}%`;
      s.style.background = st.colors[i] || "#999";
      s.title = `class ${i}: ${(v * 100).toFixed(1)} %`;
      probs.append(s);
    });
  }

  function probe(pos) {
    const item = base();
    if (!item || !st.slide) return;
    const pt = item.viewerElementToImageCoordinates(pos);
    clearTimeout(st.probeTimer);
    st.probeTimer = setTimeout(async () => {
      const seq = ++st.probeSeq;
      try {
        const w = await getJSON(`/api/slides/${encodeURIComponent(st.slide.id)}/window?x=${
          pt.x.toFixed(1)}&y=${pt.y.toFixed(1)}`);
        if (seq === st.probeSeq) showProbe(w);
      } catch (e) { /* the next move tries again */ }
    }, 60);
  }

  async function openSlide(s) {
    st.slide = s;
    $("slide-name").textContent = s.name;
    document.title = `${s.name} · convfocus viewer`;
    viewer.open([
      { tileSource: s.slide_dzi },
      { tileSource: s.overlay_dzi, opacity: st.overlayOn ? st.opacity : 0 },
    ]);
    const enc = encodeURIComponent(s.id);
    const [summary, regions] = await Promise.all([
      getJSON(`/api/slides/${enc}/summary`), getJSON(`/api/slides/${enc}/regions`)]);
    showSummary(summary);
    showRegions(regions);
  }

  async function init() {
    const legend = await getJSON("/api/legend");
    st.colors = legend.colors;
    showLegend();
    const slides = await getJSON("/api/slides");
    const sel = $("slide-select");
    if (slides.length > 1) {
      slides.forEach((s, i) => {
        const o = document.createElement("option");
        o.value = String(i);
        o.textContent = s.name;
        sel.append(o);
      });
      sel.classList.remove("hidden");
      sel.addEventListener("change", () => openSlide(slides[Number(sel.value)]));
    }
    await openSlide(slides[0]);
  }

  $("overlay-on").addEventListener("change", (e) => { st.overlayOn = e.target.checked; applyOverlay(); });
  $("opacity").addEventListener("input", (e) => {
    st.opacity = Number(e.target.value) / 100;
    st.overlayOn = true;
    applyOverlay();
  });
  document.addEventListener("keydown", (e) => {
    if (e.target instanceof HTMLInputElement && e.target.type !== "checkbox") return;
    if (e.key === "h" || e.key === "H") { st.overlayOn = !st.overlayOn; applyOverlay(); }
  });
  viewer.addHandler("open", applyOverlay);
  new OSD.MouseTracker({
    element: viewer.canvas,
    moveHandler: (e) => probe(e.position),
  });

  init().catch((e) => { $("pixels-note").textContent = `Error: ${e.message}`; });
})();
