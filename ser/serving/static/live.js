// The live microphone: "Listen" streams the microphone to WS /api/stream as 16 kHz mono 16-bit
// PCM (resampled in live-worklet.js) and shows the server's label about every second, with a
// strip of one cell per update. Self-contained: it touches only the #live section.
(function () {
  "use strict";
  const section = document.getElementById("live");
  if (!section) return;
  const button = document.getElementById("listen");
  const labelLine = document.getElementById("live-label");
  const statusLine = document.getElementById("live-status");
  const strip = document.getElementById("live-timeline");
  const legend = document.getElementById("live-legend");
  const COLOURS = ["#4f46e5", "#dc2626", "#16a34a", "#ca8a04", "#0891b2", "#9333ea", "#ea580c", "#db2777", "#64748b"];
  const CHUNK_S = 0.1;
  let session = null;

  function liveStatus(text, isError) {
    statusLine.textContent = text;
    statusLine.classList.toggle("error", Boolean(isError));
  }

  function colourOf(classes, label) {
    const index = classes.indexOf(label);
    return index < 0 ? "#d0d5dd" : COLOURS[index % COLOURS.length];
  }

  function drawLegend(classes) {
    legend.textContent = "";
    for (const name of classes) {
      const item = document.createElement("span");
      item.className = "live-key";
      const swatch = document.createElement("i");
      swatch.style.background = colourOf(classes, name);
      item.append(swatch, name);
      legend.appendChild(item);
    }
  }

  function addCell(message, classes) {
    const cell = document.createElement("span");
    cell.className = "live-cell";
    cell.dataset.start = String(message.start_s);
    cell.dataset.end = String(message.end_s);
    if (message.type === "skipped") {
      cell.dataset.skipped = "true";
      cell.title = message.end_s.toFixed(1) + " s: skipped (" + message.detail + ")";
    } else if (message.label === null) {
      cell.dataset.label = "";
      cell.title = message.end_s.toFixed(1) + " s: no speech (" + message.detail + ")";
    } else {
      cell.dataset.label = message.label;
      cell.dataset.confidence = String(message.confidence);
      cell.style.background = colourOf(classes, message.label);
      cell.style.opacity = String(0.35 + 0.65 * message.confidence);
      cell.title = message.end_s.toFixed(1) + " s: " + message.label + " " + (100 * message.confidence).toFixed(0) + "%";
    }
    strip.appendChild(cell);
    strip.scrollLeft = strip.scrollWidth;
  }

  function onMessage(message) {
    if (message.type === "ready") {
      const current = session;
      current.ready = message;
      drawLegend(message.classes);
      // A failure that comes after this session was stopped (and maybe a new one started) is not
      // the new session's: it must not tear that one down.
      startAudio(message).catch(error => {
        if (session === current) stop("Could not start the microphone: " + error, true);
      });
      return;
    }
    if (message.type === "update" && message.label !== null) {
      labelLine.textContent = message.label + " " + (100 * message.confidence).toFixed(0) + "%";
      labelLine.dataset.label = message.label;
    } else if (message.type === "update") {
      labelLine.textContent = "…";
      labelLine.dataset.label = "";
    }
    addCell(message, session.ready.classes);
    section.dataset.updates = String(strip.children.length);
  }

  async function startAudio(ready) {
    const current = session;
    await current.context.audioWorklet.addModule("static/live-worklet.js");
    if (session !== current) return;
    const node = new AudioWorkletNode(current.context, "ser-downsampler", {
      processorOptions: { targetRate: ready.sample_rate, chunkSamples: Math.round(CHUNK_S * ready.sample_rate) },
    });
    node.port.onmessage = event => {
      if (current.socket.readyState === WebSocket.OPEN) current.socket.send(event.data);
    };
    current.node = node;
    current.source = current.context.createMediaStreamSource(current.stream);
    current.source.connect(node);
    node.connect(current.context.destination);  // pulled by the graph; it outputs silence
    await current.context.resume();
    if (session !== current) return;
    section.dataset.rate = String(current.context.sampleRate);
    liveStatus("Listening (the microphone at " + current.context.sampleRate + " Hz, sent at " + ready.sample_rate +
               " Hz): a label about every " + ready.every_s + " s over the last " + ready.window_s + " s.");
  }

  function stop(text, isError) {
    const current = session;
    session = null;
    button.textContent = "Listen";
    button.classList.remove("recording");
    section.dataset.state = isError ? "error" : "stopped";
    if (text !== undefined) liveStatus(text, isError);
    if (!current) return;
    if (current.node) { current.node.port.postMessage("stop"); current.node.disconnect(); }
    if (current.source) current.source.disconnect();
    current.stream.getTracks().forEach(track => track.stop());
    current.context.close().catch(() => {});
    if (current.socket.readyState <= WebSocket.OPEN) current.socket.close(1000, "stopped");
  }

  async function listen() {
    if (!navigator.mediaDevices || !window.AudioWorkletNode) {
      liveStatus("This browser cannot stream the microphone here (it needs https or localhost).", true);
      return;
    }
    let stream;
    try {
      // The model was trained on plain recordings: no echo cancelling, noise suppression or gain riding.
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
    } catch (error) {
      liveStatus("No microphone access: " + error.message, true);
      return;
    }
    const url = new URL("api/stream?format=s16le", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(url);
    session = { stream, socket, context: new AudioContext(), ready: null };
    const current = session;
    strip.textContent = "";
    labelLine.textContent = "";
    section.dataset.state = "listening";
    section.dataset.updates = "0";
    button.textContent = "Stop";
    button.classList.add("recording");
    liveStatus("Connecting …");
    socket.onmessage = event => { if (session === current) onMessage(JSON.parse(event.data)); };
    socket.onclose = event => {
      if (session !== current) return;
      const why = event.reason ? ": " + event.reason : "";
      stop("The server closed the stream (" + event.code + why + ").", event.code !== 1000);
      section.dataset.closeCode = String(event.code);
    };
    socket.onerror = () => { if (session === current) liveStatus("Stream error; see the server's log.", true); };
  }

  button.addEventListener("click", () => {
    if (session) stop("Stopped.");
    else listen();
  });
})();
