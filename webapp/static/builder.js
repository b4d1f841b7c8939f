// The audience builder: the rule tree as nested groups of conditions.
//
// The page carries the definition and the field catalogue as JSON (#builder-data). The
// tree is drawn from it; every edit writes the definition back as JSON into the form
// the live preview posts (#definition), so the preview, the validation messages and the
// saved file all come from exactly what is on screen. Conditions move by drag (SortableJS,
// by the handle) or by keyboard on the same handle: Up / Down reorder, Right moves into
// the group just above, Left moves out of a group (from the top level: to the other of
// include / exclude).
(() => {
  const data = JSON.parse(document.getElementById("builder-data").textContent);
  const cat = data.catalogue;
  const doc = data.doc;
  const tree = document.getElementById("tree");
  const form = document.getElementById("builder");
  const definition = document.getElementById("definition");
  const announce = document.getElementById("announce");
  const NO_VALUE = new Set(["is_null", "is_not_null", "is_true", "is_false"]);
  const LISTS = new Set(["in", "not_in", "contains_any", "contains_all"]);
  const RELATIVE = /^\s*([+-])\s*(\d+)\s*(day|week|month|year)s?\s*$/i;
  let ids = 0;

  const el = (tag, attrs = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c) node.append(c);
    return node;
  };
  const say = (text) => { announce.textContent = ""; setTimeout(() => { announce.textContent = text; }, 30); };

  // -- the catalogue --------------------------------------------------------------------
  const entity = () => document.getElementById("meta-entity").value;
  const fieldsOf = (ctx) => (ctx.events ? cat.events[ctx.events].fields : cat.entities[entity()]);
  const fieldOf = (ctx, name) => fieldsOf(ctx).find((f) => f.name === name);
  const defaultField = (ctx) => fieldOf(ctx, "status") || fieldsOf(ctx)[0];

  const fieldSelect = (ctx, chosen) => {
    const select = el("select", { class: "field", "aria-label": "field" });
    for (const group of cat.groups) {
      const members = fieldsOf(ctx).filter((f) => f.group === group);
      if (!members.length) continue;
      const og = el("optgroup", { label: group });
      for (const f of members) og.append(el("option", { value: f.name, title: f.description, text: f.name }));
      select.append(og);
    }
    if (!fieldOf(ctx, chosen)) select.prepend(el("option", { value: chosen, text: `${chosen} (not a field)` }));
    select.value = chosen;
    return select;
  };
  const opSelect = (ops, chosen, label) => {
    const select = el("select", { class: "op", "aria-label": label });
    const all = ops.includes(chosen) || chosen === undefined ? ops : [chosen, ...ops];
    for (const op of all) select.append(el("option", { value: op, text: cat.op_labels[op] || op }));
    select.value = chosen === undefined ? ops[0] : chosen;
    return select;
  };

  // -- value widgets: each returns a node whose .read() gives the value ------------------
  const textInput = (value, label, extra = {}) => {
    const input = el("input", { type: "text", value: value ?? "", "aria-label": label, ...extra });
    input.read = () => input.value;
    return input;
  };
  const numberInput = (value, label, step) => {
    if (value !== undefined && value !== null && typeof value !== "number") {
      const raw = textInput(String(value), label);  // not a number: keep it as written
      raw.read = () => raw.value;
      return raw;
    }
    const input = el("input", { type: "number", step, value: value ?? "", "aria-label": label });
    input.read = () => (input.value === "" ? null : Number(input.value));
    return input;
  };
  const dateWidget = (value, label) => keeping(dateBox(value, label), value);
  const dateBox = (value, label) => {
    const box = el("span", { class: "date-value" });
    const m = typeof value === "string" ? value.match(RELATIVE) : null;
    const iso = typeof value === "string" && /^\d{4}-\d{2}-\d{2}$/.test(value);
    const kind = el("select", { "aria-label": `${label}: kind` });
    for (const [v, t] of [["ago", "ago"], ["ahead", "from now"], ["today", "today"], ["date", "on date"], ["text", "as written"]]) {
      kind.append(el("option", { value: v, text: t }));
    }
    const n = el("input", { type: "number", min: "0", step: "1", class: "n", "aria-label": `${label}: how many` });
    const unit = el("select", { "aria-label": `${label}: unit` });
    for (const u of ["day", "week", "month", "year"]) unit.append(el("option", { value: u, text: `${u}s` }));
    const day = el("input", { type: "date", "aria-label": `${label}: date` });
    const raw = el("input", { type: "text", "aria-label": `${label}: as written` });
    if (value === "today") kind.value = "today";
    else if (m) { kind.value = m[1] === "-" ? "ago" : "ahead"; n.value = m[2]; unit.value = m[3].toLowerCase(); }
    else if (iso) { kind.value = "date"; day.value = value; }
    else if (value === undefined || value === null || value === "") { kind.value = "ago"; n.value = "6"; unit.value = "month"; }
    else { kind.value = "text"; raw.value = String(value); }
    const show = () => {
      n.hidden = unit.hidden = !["ago", "ahead"].includes(kind.value);
      day.hidden = kind.value !== "date";
      raw.hidden = kind.value !== "text";
    };
    kind.addEventListener("change", show);
    show();
    box.append(kind, n, unit, day, raw);
    box.read = () => {
      if (kind.value === "today") return "today";
      if (kind.value === "date") return day.value;
      if (kind.value === "text") return raw.value;
      const count = Number(n.value || 0);
      return `${kind.value === "ago" ? "-" : "+"}${count} ${unit.value}${count === 1 ? "" : "s"}`;
    };
    return box;
  };
  const scalarWidget = (type, value, label) => {
    if (type === "integer") return numberInput(value, label, "1");
    if (type === "number") return numberInput(value, label, "any");
    if (type === "date" || type === "timestamp") return dateWidget(value, label);
    if (type === "boolean") {
      const select = el("select", { "aria-label": label });
      select.append(el("option", { value: "true", text: "yes" }), el("option", { value: "false", text: "no" }));
      select.value = value === false ? "false" : "true";
      select.read = () => select.value === "true";
      return select;
    }
    return textInput(value, label);
  };
  // A value box shows what a browser can (a text box drops line breaks, a list box splits
  // on commas): until it is edited, the definition keeps the value exactly as it was.
  const keeping = (box, value) => {
    if (value === undefined) return box;
    const read = box.read;
    const start = JSON.stringify(read());
    box.read = () => { const v = read(); return JSON.stringify(v) === start ? value : v; };
    return box;
  };
  const valueWidget = (type, op, value) => (NO_VALUE.has(op) ? valueBox(type, op, value) : keeping(valueBox(type, op, value), value));
  const valueBox = (type, op, value) => {
    const box = el("span", { class: "value" });
    if (NO_VALUE.has(op)) { box.read = () => undefined; return box; }
    if (op === "within_km") {
      const v = value && typeof value === "object" ? value : {};
      const parts = ["lat", "lon", "km"].map((k) => [k, numberInput(v[k], k, "any")]);
      for (const [k, input] of parts) box.append(el("label", { text: `${k} ` }, input));
      box.read = () => Object.fromEntries(parts.map(([k, input]) => [k, input.read()]));
      return box;
    }
    if (LISTS.has(op)) {
      const items = Array.isArray(value) ? value : value === undefined || value === null || value === "" ? [] : [value];
      const input = textInput(items.join(", "), "values, separated by commas", { class: "list-value", placeholder: "a, b, c" });
      const numeric = type === "integer" || type === "number";
      box.append(input);
      box.read = () => input.value.split(",").map((s) => s.trim()).filter((s) => s !== "")
        .map((s) => (numeric && s !== "" && !Number.isNaN(Number(s)) ? Number(s) : s));
      return box;
    }
    if (op === "between") {
      const [a, b] = Array.isArray(value) ? value : [undefined, undefined];
      const lo = scalarWidget(type, a, "from"), hi = scalarWidget(type, b, "to");
      box.append(lo, el("span", { text: " and " }), hi);
      box.read = () => [lo.read(), hi.read()];
      return box;
    }
    const one = scalarWidget(type, value, "value");
    box.append(one);
    box.read = () => one.read();
    return box;
  };

  // -- nodes ------------------------------------------------------------------------------
  const handle = () => el("button", { type: "button", class: "handle", title: "Drag, or use the arrow keys",
    "aria-label": "Move: arrow keys up and down reorder, right moves into the group above, left moves out", text: "⠿" });
  const removeButton = () => el("button", { type: "button", class: "remove", "aria-label": "Remove", text: "✕" });

  const fieldNode = (cond, ctx) => {
    const li = el("li", { class: "node", "data-kind": "field", "data-node": ++ids });
    li.ctx = ctx;
    const chosen = cond.field ?? defaultField(ctx).name;
    const select = fieldSelect(ctx, chosen);
    const slot = el("span", { class: "op-value" });
    const help = el("p", { class: "help" });
    // A value carries over to another operator when it has the same shape.
    const sameShape = (now, before, v) => (LISTS.has(now) === LISTS.has(before) && (now === "between") === (before === "between") ? v : undefined);
    // A new field gets a new operator list; a new operator only a new value box, so the
    // list keeps focus while its options are stepped through with the arrow keys.
    const drawValue = (value) => {
      const f = fieldOf(ctx, select.value);
      const old = slot.querySelector(".value");
      const box = valueWidget(f ? f.type : "string", slot.querySelector(".op").value, value);
      if (old) old.replaceWith(box); else slot.append(box);
    };
    const draw = (op, value) => {
      const f = fieldOf(ctx, select.value);
      const ops = f ? cat.ops[f.type] : [op ?? "eq"];
      const ops2 = opSelect(ops, ops.includes(op) || !f ? op : undefined, "operator");
      let before = ops2.value;
      slot.replaceChildren(ops2);
      drawValue(value);
      help.textContent = f ? `${f.description} (${f.type})` : "";
      ops2.addEventListener("change", () => {
        const v = li.readValue();
        drawValue(sameShape(ops2.value, before, v));
        before = ops2.value;
        changed();
      });
    };
    li.readValue = () => slot.querySelector(".value").read();
    li.read = () => {
      const out = { field: select.value, op: slot.querySelector(".op").value };
      const v = li.readValue();
      if (v !== undefined) out.value = v;
      return out;
    };
    select.addEventListener("change", () => { draw(slot.querySelector(".op").value, undefined); changed(); });
    draw(cond.op, "value" in cond ? cond.value : undefined);
    li.append(handle(), select, slot, removeButton(), help, el("p", { class: "issue", role: "alert", hidden: true }));
    return li;
  };

  const eventsNode = (cond, ctx) => {
    const li = el("li", { class: "node", "data-kind": "events", "data-node": ++ids });
    li.ctx = ctx;
    const which = el("select", { class: "events", "aria-label": "events" });
    for (const [name, src] of Object.entries(cat.events)) which.append(el("option", { value: name, text: `${src.group}: ${name}` }));
    which.value = cond.events in cat.events ? cond.events : "appointments";
    const where = el("div", { class: "where" });
    const addWhere = el("button", { type: "button", class: "add-where", text: "+ where" });
    const drawWhere = (group) => {
      where.replaceChildren();
      // One scope per events condition: its conditions move only among its own groups.
      if (group) where.append(groupBox(group, { events: which.value, scope: `where-${++ids}` }, "where"));
      addWhere.hidden = Boolean(group);
    };
    addWhere.addEventListener("click", () => { drawWhere({ match: "all", conditions: [{}] }); changed(); });
    // Another kind of event keeps the where conditions; a field the new kind lacks is
    // marked, and validation says so at that condition.
    which.addEventListener("change", () => {
      const group = where.querySelector(":scope > .group");
      drawWhere(group ? readGroup(group) : null);
      changed();
    });
    const within = cond.within || null;
    const useWithin = el("input", { type: "checkbox", class: "use-within", "aria-label": "within a window" });
    useWithin.checked = Boolean(within);
    const from = dateWidget(within ? within.from : "-12 months", "window from");
    const to = dateWidget(within ? within.to : "today", "window to");
    const fromOn = el("input", { type: "checkbox", "aria-label": "window has a start" });
    const toOn = el("input", { type: "checkbox", "aria-label": "window has an end" });
    fromOn.checked = !within || within.from !== undefined;
    toOn.checked = !within || within.to !== undefined;
    const windowBox = el("span", { class: "window" }, el("label", {}, fromOn, " from "), from, el("label", {}, toOn, " to "), to);
    const showWindow = () => { windowBox.hidden = !useWithin.checked; };
    useWithin.addEventListener("change", showWindow);
    showWindow();
    const count = cond.count || { op: "gte", value: 1 };
    const countOp = opSelect(cat.count_ops, count.op, "count operator");
    const countSlot = el("span", { class: "count-value" });
    const drawCount = (v) => countSlot.replaceChildren(valueWidget("integer", countOp.value, v));
    countOp.addEventListener("change", () => { drawCount(undefined); changed(); });
    drawCount(count.value);
    li.read = () => {
      const out = { events: which.value };
      const group = where.querySelector(":scope > .group");
      if (group) out.where = readGroup(group);
      if (useWithin.checked) {
        out.within = {};
        if (fromOn.checked) out.within.from = from.read();
        if (toOn.checked) out.within.to = to.read();
      }
      const c = { op: countOp.value, value: countSlot.querySelector(".value").read() };
      if (!(c.op === "gte" && c.value === 1)) out.count = c;
      return out;
    };
    li.append(
      handle(), el("span", { class: "label", text: "Count of " }), which, removeButton(),
      el("div", { class: "events-body" }, where, addWhere,
        el("p", {}, el("label", {}, useWithin, " within a window"), windowBox),
        el("p", {}, el("span", { text: "matching events: " }), countOp, countSlot)),
      el("p", { class: "issue", role: "alert", hidden: true }),
    );
    drawWhere(cond.where || null);
    return li;
  };

  const groupNode = (group, ctx) => {
    const li = el("li", { class: "node", "data-kind": "group", "data-node": ++ids });
    li.ctx = ctx;
    li.append(handle(), groupBox(group, ctx, "group"), el("p", { class: "issue", role: "alert", hidden: true }));
    return li;
  };

  const nodeOf = (cond, ctx) => {
    if (cond && "events" in cond) return eventsNode(cond, ctx);
    if (cond && ("conditions" in cond || "match" in cond)) return groupNode(cond, ctx);
    return fieldNode(cond || {}, ctx);
  };

  // A group's box: match all / any, its conditions, and buttons to add more. `role`:
  // include / exclude (a root), where (of an events condition) or group (nested).
  const groupBox = (group, ctx, role) => {
    const box = el("div", { class: `group ${role}` });
    const match = el("select", { class: "match", "aria-label": "match" });
    match.append(el("option", { value: "all", text: "all of" }), el("option", { value: "any", text: "any of" }));
    match.value = group.match === "any" ? "any" : "all";
    const list = el("ol", { class: "conditions" });
    list.dataset.context = ctx.scope || "entity";
    for (const c of group.conditions || []) list.append(nodeOf(c, ctx));
    const add = (make, what) => {
      const b = el("button", { type: "button", class: `add-${what.replace(" ", "-")}`, text: `+ ${what}` });
      b.addEventListener("click", () => {
        const node = make();
        list.append(node);
        changed();
        const focus = node.querySelector("select, input");
        if (focus) focus.focus();
        say(`added a ${what} at the end of the group`);
      });
      return b;
    };
    const title = { include: "Include who matches ", exclude: "Exclude who matches ", where: "where ", group: "" }[role];
    const head = el("div", { class: "group-head" }, el("span", { class: "label", text: title }), match);
    if (role === "exclude") {
      const drop = el("button", { type: "button", class: "remove-exclude", text: "Remove the exclusion" });
      drop.addEventListener("click", () => { box.parentElement.replaceChildren(addExcludeButton()); changed(); });
      head.append(drop);
    }
    if (role === "where") {
      const drop = removeButton();
      drop.classList.add("remove-where");
      drop.addEventListener("click", () => { const li = box.closest("li.node"); box.remove(); li.querySelector(".add-where").hidden = false; changed(); });
      head.append(drop);
    }
    if (role === "group") head.append(removeButton());
    const slot = role === "include" || role === "exclude" ? el("p", { class: "issue", role: "alert", hidden: true }) : null;
    box.append(head, ...(slot ? [slot] : []), list, el("div", { class: "group-foot" },
      add(() => fieldNode({}, ctx), "condition"),
      ctx.events ? null : add(() => eventsNode({ events: "appointments" }, ctx), "events condition"),
      add(() => groupNode({ match: "any", conditions: [{}] }, ctx), "group")));
    sortable(list);
    return box;
  };

  const sortable = (list) => {
    if (typeof Sortable === "undefined") return;
    Sortable.create(list, {
      group: list.dataset.context, handle: ".handle", animation: 120, fallbackOnBody: true,
      swapThreshold: 0.65, emptyInsertThreshold: 12,
      onEnd: () => { changed(); say("moved"); },
    });
  };

  // -- reading the tree back --------------------------------------------------------------
  const readGroup = (box) => ({
    match: box.querySelector(":scope > .group-head .match").value,
    conditions: [...box.querySelector(":scope > .conditions").children].map((li) => readNode(li)),
  });
  const readNode = (li) => (li.dataset.kind === "group" ? readGroup(li.querySelector(":scope > .group")) : li.read());

  // Every node's path in the definition, as `audiences validate` writes them.
  const label = (box, path) => {
    box.dataset.path = path;
    [...box.querySelector(":scope > .conditions").children].forEach((li, n) => {
      const p = `${path}.conditions[${n}]`;
      li.dataset.path = p;
      if (li.dataset.kind === "group") label(li.querySelector(":scope > .group"), p);
      if (li.dataset.kind === "events") {
        const where = li.querySelector(":scope > .events-body > .where > .group");
        if (where) label(where, `${p}.where`);
      }
    });
  };

  // A text box shows a value as the browser can (a folded description loses its line
  // breaks): until it is edited, the definition keeps the value exactly as it was.
  const shown = {};
  for (const k of ["name", "description", "department"]) shown[k] = document.getElementById(`meta-${k}`).value;
  const metaValue = (k) => {
    const v = document.getElementById(`meta-${k}`).value;
    return v === shown[k] && k in doc ? doc[k] : v;
  };
  const read = () => {
    const out = {};
    for (const [k, v] of Object.entries(doc)) if (!["include", "exclude"].includes(k)) out[k] = v;
    out.name = metaValue("name");
    out.description = metaValue("description");
    const dept = String(metaValue("department") ?? "").trim();
    if (dept) out.department = metaValue("department"); else delete out.department;
    for (const k of ["entity", "mode", "visibility"]) out[k] = metaValue(k);
    out.include = readGroup(tree.querySelector(".root-include > .group"));
    const exclude = tree.querySelector(".root-exclude > .group");
    if (exclude) out.exclude = readGroup(exclude);
    return out;
  };

  // `data-pending` on the form while the preview shows an older version of the tree.
  let pending = null, edits = 0, sent = -1;
  form.addEventListener("htmx:beforeRequest", () => { sent = edits; });
  form.addEventListener("htmx:afterRequest", () => { if (sent === edits) delete form.dataset.pending; });
  const changed = () => {
    clearTimeout(pending);
    edits += 1;
    form.dataset.pending = "1";
    for (const box of tree.querySelectorAll(".root-include > .group, .root-exclude > .group")) {
      label(box, box.parentElement.classList.contains("root-include") ? "include" : "exclude");
    }
    definition.value = JSON.stringify(read());
    pending = setTimeout(() => htmx.trigger(form, "tree-change"), 250);
  };

  const addExcludeButton = () => {
    const b = el("button", { type: "button", class: "add-exclude", text: "+ Exclude who matches…" });
    b.addEventListener("click", () => {
      const root = b.parentElement;
      root.replaceChildren(groupBox({ match: "any", conditions: [{}] }, {}, "exclude"));
      changed();
      root.querySelector("select.field").focus();
    });
    return b;
  };

  const draw = () => {
    tree.replaceChildren(
      el("div", { class: "root-include" }, groupBox(doc.include || { match: "all", conditions: [{}] }, {}, "include")),
      el("div", { class: "root-exclude" }, doc.exclude ? groupBox(doc.exclude, {}, "exclude") : addExcludeButton()),
    );
  };

  // -- events on the whole tree -----------------------------------------------------------
  tree.addEventListener("input", changed);
  tree.addEventListener("change", changed);
  tree.addEventListener("click", (event) => {
    const remove = event.target.closest("button.remove");
    if (!remove || remove.classList.contains("remove-where")) return;
    const li = remove.closest("li.node");
    if (!li) return;
    li.remove();
    changed();
    say("removed");
  });
  tree.addEventListener("keydown", (event) => {
    const h = event.target.closest("button.handle");
    if (!h) return;
    const li = h.closest("li.node");
    const list = li.parentElement;
    let where = null;
    if (event.key === "ArrowUp" && li.previousElementSibling) {
      list.insertBefore(li, li.previousElementSibling);
      where = "up";
    } else if (event.key === "ArrowDown" && li.nextElementSibling) {
      list.insertBefore(li.nextElementSibling, li);
      where = "down";
    } else if (event.key === "ArrowRight" && li.previousElementSibling?.dataset.kind === "group") {
      li.previousElementSibling.querySelector(":scope > .group > .conditions").append(li);
      where = "into the group above";
    } else if (event.key === "ArrowLeft") {
      const outer = list.closest(".group").parentElement.closest("li.node");
      if (outer && outer.dataset.kind === "group") {
        outer.after(li);
        where = "out of its group";
      } else if (list.dataset.context === "entity") {
        const other = tree.querySelector(list.closest(".root-include") ? ".root-exclude" : ".root-include");
        if (!other.querySelector(":scope > .group")) {
          other.replaceChildren(groupBox({ match: "any", conditions: [] }, {}, "exclude"));
        }
        other.querySelector(":scope > .group > .conditions").append(li);
        where = other.classList.contains("root-exclude") ? "to the exclusion" : "to the inclusion";
      }
    }
    if (!where) return;
    event.preventDefault();
    h.focus();
    changed();
    const n = [...li.parentElement.children].indexOf(li) + 1;
    say(`moved ${where}: position ${n} of ${li.parentElement.children.length}`);
  });
  for (const id of ["meta-name", "meta-description", "meta-department", "meta-mode", "meta-visibility"]) {
    document.getElementById(id).addEventListener("input", changed);
  }
  document.getElementById("meta-entity").addEventListener("change", () => {
    doc.include = readGroup(tree.querySelector(".root-include > .group"));
    const ex = tree.querySelector(".root-exclude > .group");
    if (ex) doc.exclude = readGroup(ex); else delete doc.exclude;
    draw();
    changed();
  });

  // Validation messages at the condition they concern: the node with the longest path
  // that the message's path starts with.
  document.body.addEventListener("htmx:afterSwap", (event) => {
    if (event.detail.target.id !== "preview" && event.detail.target.id !== "save-result") return;
    const items = event.detail.target.querySelectorAll("[data-issue-path]");
    if (event.detail.target.id === "preview" || items.length) {
      for (const p of tree.querySelectorAll(".issue")) { p.hidden = true; p.textContent = ""; }
      for (const n of tree.querySelectorAll(".has-issue")) n.classList.remove("has-issue");
    }
    const nodes = [...tree.querySelectorAll("li.node[data-path], .root-include > .group, .root-exclude > .group")];
    for (const item of items) {
      const path = item.dataset.issuePath;
      const best = nodes.filter((n) => path === n.dataset.path || path.startsWith(`${n.dataset.path}.`) || path.startsWith(`${n.dataset.path}[`))
        .sort((a, b) => b.dataset.path.length - a.dataset.path.length)[0];
      if (!best) continue;
      const slot = best.querySelector(":scope > .issue");
      slot.hidden = false;
      slot.textContent = slot.textContent ? `${slot.textContent}; ${item.dataset.message}` : item.dataset.message;
      best.classList.add("has-issue");
    }
  });

  // A new segment's file name follows its name until the name is typed in by hand.
  const slug = document.getElementById("slug");
  if (slug && !slug.readOnly) {
    let typed = slug.value !== "";
    slug.addEventListener("input", () => { typed = true; });
    document.getElementById("meta-name").addEventListener("input", (e) => {
      if (!typed) slug.value = e.target.value.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 80);
    });
  }

  draw();
  changed();
})();
