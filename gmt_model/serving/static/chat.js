/* gmtrouter chat page: vanilla JS, talks only to this server's own API. */
(function () {
  "use strict";

  var LS_TOKEN = "gmtrouter.token";
  var LS_USER = "gmtrouter.user";
  var LS_USERS = "gmtrouter.users";
  var MAX_USERS = 20;

  var $ = function (id) { return document.getElementById(id); };
  var state = {
    messages: [],          // the OpenAI message list of this session
    sessionId: newSessionId(),
    ratingScale: [1, 5],
    busy: false,
    endpoints: null,       // candidate LLMs with an endpoint (null: not known yet)
    lastRouted: null,      // the model (and scores) of the latest routing decision ...
    lastScores: null,
    ratedSince: false      // ... and whether the user rated something after it
  };

  function newSessionId() {
    if (window.crypto && typeof window.crypto.randomUUID === "function") {
      return "chat-" + window.crypto.randomUUID();
    }
    return "chat-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 10);
  }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function token() { return $("token").value.trim(); }

  function setStatus(text, isError) {
    var s = $("status");
    s.textContent = text || "";
    s.className = "status" + (isError ? " err" : "");
  }

  function readUsers() {
    try {
      var list = JSON.parse(localStorage.getItem(LS_USERS) || "[]");
      return Array.isArray(list) ? list.filter(function (u) { return typeof u === "string" && u; }) : [];
    } catch (e) {
      return [];
    }
  }

  function rememberUser(user) {
    var users = readUsers().filter(function (u) { return u !== user; });
    users.unshift(user);
    localStorage.setItem(LS_USERS, JSON.stringify(users.slice(0, MAX_USERS)));
    localStorage.setItem(LS_USER, user);
    renderUsers();
  }

  function renderUsers() {
    var dl = $("known-users");
    dl.textContent = "";
    readUsers().forEach(function (u) {
      var opt = document.createElement("option");
      opt.value = u;
      dl.appendChild(opt);
    });
  }

  /** POST/GET JSON to this server; throws Error(message) with .status on failure. */
  function api(method, path, body) {
    var headers = { "Accept": "application/json" };
    if (body !== undefined) { headers["Content-Type"] = "application/json"; }
    if (token()) { headers["Authorization"] = "Bearer " + token(); }
    return fetch(path, {
      method: method,
      headers: headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store"
    }).then(function (resp) {
      return resp.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (!resp.ok) {
          var msg = (data && data.error && data.error.message) || ("HTTP " + resp.status);
          var err = new Error(msg);
          err.status = resp.status;
          err.code = (data && data.error && data.error.code) || null;
          if (resp.status === 401) { flagToken(); }
          throw err;
        }
        return data;
      });
    });
  }

  function flagToken() {
    var t = $("token");
    t.classList.add("needs-attention");
    setStatus("This server needs an access token: enter it in the 'Access token' field.", true);
  }

  function loadModels() {
    return api("GET", "/v1/models").then(function (data) {
      $("token").classList.remove("needs-attention");
      var sel = $("model-select");
      var current = sel.value;
      sel.textContent = "";
      (data.data || []).forEach(function (m) {
        var label = m.id === "router" ? "router (personalised)" : m.id;
        if (m.id !== "router" && m.endpoint_configured === false) { label += " (no endpoint)"; }
        var opt = el("option", null, label);
        opt.value = m.id;
        sel.appendChild(opt);
      });
      sel.value = current && Array.prototype.some.call(sel.options, function (o) { return o.value === current; })
        ? current : "router";
      if (Array.isArray(data.rating_scale) && data.rating_scale.length === 2) {
        state.ratingScale = data.rating_scale;
      }
      if ($("status").classList.contains("err")) { setStatus(""); }
      var withEndpoint = (data.data || []).filter(function (m) { return m.id !== "router" && m.endpoint_configured; });
      var first = state.endpoints === null;
      state.endpoints = withEndpoint.map(function (m) { return m.id; });
      if (first && state.endpoints.length === 0) {
        $("route-only").checked = true;
        setStatus("No LLM endpoints are configured on this server: route-only mode. Each message shows the " +
                  "routing decision; rate the choice and the next route follows your ratings.");
      }
    }).catch(function (err) {
      if (err.status !== 401) { setStatus("Could not load models: " + err.message, true); }
    });
  }

  /** 1..5 stars -> the router's rating scale. */
  function starsToRating(stars) {
    var lo = Number(state.ratingScale[0]), hi = Number(state.ratingScale[1]);
    if (lo <= 1 && hi >= 5) { return stars; }
    return lo + (stars - 1) * (hi - lo) / 4;
  }

  function scrollDown() {
    var main = document.querySelector("main");
    main.scrollTop = main.scrollHeight;
  }

  function hideEmpty() {
    var hint = $("empty-hint");
    if (hint) { hint.remove(); }
  }

  function addUserBubble(text) {
    hideEmpty();
    var b = el("div", "msg user", text);
    $("messages").appendChild(b);
    scrollDown();
    return b;
  }

  function renderScores(routing, chosen) {
    var scores = routing && routing.scores;
    if (!scores || typeof scores !== "object") { return null; }
    var grid = el("div", "scores");
    Object.keys(scores).map(function (k) { return [k, Number(scores[k])]; })
      .sort(function (a, b) { return b[1] - a[1]; })
      .forEach(function (pair) {
        var row = el("div", "score-row" + (pair[0] === chosen ? " chosen" : ""));
        row.setAttribute("data-model", pair[0]);
        row.setAttribute("data-score", String(pair[1]));
        var bar = el("div", "bar");
        var fill = el("span");
        var pct = isFinite(pair[1]) ? Math.max(0, Math.min(1, pair[1])) * 100 : 0;
        fill.style.width = pct.toFixed(1) + "%";
        bar.appendChild(fill);
        row.appendChild(el("span", "score-name", pair[0]));
        row.appendChild(bar);
        row.appendChild(el("span", "score-val", isFinite(pair[1]) ? pair[1].toFixed(3) : "?"));
        grid.appendChild(row);
      });
    return grid;
  }

  function renderRating(ctx, routeOnly) {
    var box = el("div", "rating");
    box.appendChild(el("span", "rating-label", routeOnly ? "Rate this choice" : "Rate this answer"));
    var status = el("span", "rating-status");
    var stars = [];
    function paint(n, cls) {
      stars.forEach(function (s, i) { s.classList.toggle(cls, i < n); });
    }
    for (var i = 1; i <= 5; i++) {
      (function (n) {
        var s = el("button", "star", "\u2605");
        s.type = "button";
        s.setAttribute("data-value", String(n));
        s.setAttribute("aria-label", n + " star" + (n > 1 ? "s" : ""));
        s.addEventListener("mouseenter", function () { paint(n, "hover"); });
        s.addEventListener("mouseleave", function () { paint(0, "hover"); });
        s.addEventListener("click", function () { sendRating(ctx, n, stars, status, paint); });
        stars.push(s);
        box.appendChild(s);
      })(i);
    }
    box.appendChild(status);
    return box;
  }

  function sendRating(ctx, n, stars, status, paint) {
    stars.forEach(function (s) { s.disabled = true; });
    status.className = "rating-status";
    status.textContent = "sending\u2026";
    var body = {
      user_id: ctx.user, query: ctx.query, model: ctx.model,
      rating: starsToRating(n), session_id: state.sessionId, turn: ctx.turn
    };
    api("POST", "/v1/feedback", body).then(function () {
      state.ratedSince = true;
      paint(n, "on");
      status.className = "rating-status ok";
      status.textContent = "Thanks \u2014 rated " + n + "/5";
    }).catch(function (err) {
      stars.forEach(function (s) { s.disabled = false; });
      status.className = "rating-status err";
      status.textContent = "Rating failed: " + err.message;
    });
  }

  function addAnswer(text, model, routing, ctx, routeOnly) {
    var card = el("div", "msg assistant" + (routeOnly ? " route-card" : ""));
    card.setAttribute("data-model", model);
    if (routeOnly) {
      card.appendChild(el("div", "route-note", text));
    } else {
      card.appendChild(el("div", "answer-text", text));
    }
    var meta = el("div", "meta");
    var head = el("div", "meta-head");
    head.appendChild(el("span", null, routeOnly ? "routed to" : "answered by"));
    head.appendChild(el("span", "badge routed-model", model));
    if (routing && routing.routed) {
      if (state.ratedSince && state.lastRouted && state.lastRouted !== model) {
        head.appendChild(el("span", "badge changed", "changed after your rating (was " + state.lastRouted + ")"));
      } else if (state.ratedSince && state.lastScores && routing.scores &&
                 typeof state.lastScores[model] === "number" && typeof routing.scores[model] === "number") {
        var delta = routing.scores[model] - state.lastScores[model];
        head.appendChild(el("span", "badge moved", model + " " + (delta >= 0 ? "+" : "") + delta.toFixed(3) +
                            " since your rating"));
      }
      state.lastRouted = model;
      state.lastScores = routing.scores || null;
      state.ratedSince = false;
    }
    if (routing && routing.routed) {
      if (typeof routing.confidence === "number") {
        head.appendChild(el("span", "confidence", "confidence " + (routing.confidence * 100).toFixed(1) + "%"));
      }
      if (routing.cold_start) { head.appendChild(el("span", "badge cold", "cold start")); }
    } else {
      head.appendChild(el("span", null, "(chosen directly, routing bypassed)"));
    }
    meta.appendChild(head);
    var grid = renderScores(routing, model);
    if (grid) { meta.appendChild(grid); }
    if (routing && routing.reasoning) { meta.appendChild(el("p", "reasoning", routing.reasoning)); }
    meta.appendChild(renderRating(ctx, routeOnly));
    if (routeOnly) {
      var again = el("button", "link route-again", "route this again");
      again.type = "button";
      again.title = "Ask the router again for the same message (after rating, the choice may change)";
      again.addEventListener("click", function () { routeOnlyTurn(ctx.query, ctx.turn, ctx.history, null); });
      meta.appendChild(again);
    }
    card.appendChild(meta);
    $("messages").appendChild(card);
    scrollDown();
  }

  function answerText(data) {
    var choice = data && data.choices && data.choices[0];
    var content = choice && choice.message && choice.message.content;
    if (typeof content === "string") { return content; }
    if (Array.isArray(content)) {
      return content.map(function (p) { return (p && p.text) || ""; }).join("");
    }
    return "(empty answer)";
  }

  function setBusy(busy) {
    state.busy = busy;
    $("send").disabled = busy;
    $("send").textContent = busy ? "Sending\u2026" : "Send";
  }

  function send() {
    if (state.busy) { return; }
    var text = $("message").value.trim();
    var user = $("user-id").value.trim();
    if (!user) {
      setStatus("Enter a user id first: routing is personalised per user.", true);
      $("user-id").classList.add("needs-attention");
      $("user-id").focus();
      return;
    }
    $("user-id").classList.remove("needs-attention");
    if (!text) { $("message").focus(); return; }
    rememberUser(user);
    var model = $("model-select").value || "router";
    var history = state.messages.filter(function (m) { return m.role === "user"; })
      .map(function (m) { return m.content; });
    state.messages.push({ role: "user", content: text });
    var turn = history.length + 1;
    var bubble = addUserBubble(text);
    $("message").value = "";
    if ($("route-only").checked && model === "router") {
      routeOnlyTurn(text, turn, history, bubble);
      return;
    }
    setBusy(true);
    setStatus("Routing and waiting for the answer\u2026");
    var body = { model: model, user: user, messages: state.messages.slice(), session_id: state.sessionId };
    api("POST", "/v1/chat/completions", body).then(function (data) {
      var answer = answerText(data);
      var routed = (data && data.model) || model;
      state.messages.push({ role: "assistant", content: answer });
      addAnswer(answer, routed, data && data.routing, { user: user, query: text, model: routed, turn: turn });
      setStatus("");
    }).catch(function (err) {
      if (err.code === "endpoint_not_configured" && model === "router") {
        // no endpoint for the routed LLM: show the routing decision instead, to rate
        setBusy(false);
        routeOnlyTurn(text, turn, history, bubble, err.message);
        return;
      }
      state.messages.pop();  // keep the conversation consistent: the failed turn is not part of it
      bubble.classList.add("failed");
      bubble.title = err.message;
      if (err.status !== 401) { setStatus("Request failed: " + err.message, true); }
      $("message").value = text;
    }).then(function () {
      setBusy(false);
      $("message").focus();
    });
  }

  /** Route only (no LLM call): POST /v1/route, show the decision, let the user rate the choice. */
  function routeOnlyTurn(text, turn, history, bubble, why) {
    var user = $("user-id").value.trim();
    setBusy(true);
    setStatus("Routing\u2026");
    var body = { query_text: text, user_id: user, session_id: state.sessionId, turn: turn,
                 conversation_history: history };
    return api("POST", "/v1/route", body).then(function (r) {
      var routing = { routed: true, confidence: r.confidence, scores: r.scores, reasoning: r.reasoning,
                      cold_start: r.cold_start };
      var note = (why ? why + " \u2014 " : "") + "Route only: the router chose " + r.model_name +
        " for this message (no LLM was called). Rate the choice: a low rating steers this user's next route " +
        "elsewhere, a high one keeps it.";
      addAnswer(note, r.model_name, routing, { user: user, query: text, model: r.model_name, turn: turn,
                                               history: history }, true);
      setStatus("");
    }).catch(function (err) {
      if (bubble) {
        state.messages.pop();
        bubble.classList.add("failed");
        bubble.title = err.message;
        $("message").value = text;
      }
      if (err.status !== 401) { setStatus("Routing failed: " + err.message, true); }
    }).then(function () {
      setBusy(false);
      $("message").focus();
    });
  }

  function newChat() {
    state.messages = [];
    state.sessionId = newSessionId();
    state.lastRouted = null;
    state.lastScores = null;
    state.ratedSince = false;
    $("session-id").textContent = state.sessionId;
    var box = $("messages");
    box.textContent = "";
    var hint = el("div", "empty");
    hint.id = "empty-hint";
    hint.appendChild(el("p", null, "New session. Ask anything."));
    box.appendChild(hint);
    setStatus("");
  }

  function init() {
    $("token").value = localStorage.getItem(LS_TOKEN) || "";
    $("user-id").value = localStorage.getItem(LS_USER) || "";
    $("session-id").textContent = state.sessionId;
    renderUsers();
    $("token").addEventListener("change", function () {
      var t = token();
      if (t) { localStorage.setItem(LS_TOKEN, t); } else { localStorage.removeItem(LS_TOKEN); }
      loadModels();
    });
    $("settings").addEventListener("submit", function (ev) { ev.preventDefault(); });
    $("new-chat").addEventListener("click", newChat);
    $("composer-form").addEventListener("submit", function (ev) { ev.preventDefault(); send(); });
    $("message").addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); send(); }
    });
    loadModels();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
