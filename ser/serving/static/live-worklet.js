// The live microphone's audio thread: downmix, low-pass and resample from the AudioContext's
// rate (44.1 or 48 kHz, whatever the device runs at) to the server's 16 kHz, and post 16-bit
// chunks to the page, which sends them over the WebSocket unchanged.
"use strict";

const TAPS = 63;

// A windowed-sinc low-pass (Blackman) under the target Nyquist, so what is above 8 kHz does not
// fold back into the band the model hears.
function lowPass(cutoff) {
  const kernel = new Float32Array(TAPS);
  const middle = (TAPS - 1) / 2;
  let sum = 0;
  for (let k = 0; k < TAPS; k++) {
    const x = k - middle;
    const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
    const window = 0.42 - 0.5 * Math.cos(2 * Math.PI * k / (TAPS - 1)) + 0.08 * Math.cos(4 * Math.PI * k / (TAPS - 1));
    kernel[k] = sinc * window;
    sum += kernel[k];
  }
  for (let k = 0; k < TAPS; k++) kernel[k] /= sum;
  return kernel;
}

class Downsampler extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate, chunkSamples } = options.processorOptions;
    this.step = sampleRate / targetRate;  // input samples per output sample
    this.kernel = this.step > 1 ? lowPass(0.45 / this.step) : Float32Array.of(1);
    // Input kept from absolute index rawStart on; zeros before the first sample.
    this.raw = new Float32Array(this.kernel.length - 1);
    this.rawStart = -(this.kernel.length - 1);
    this.position = 0;  // absolute input position of the next output sample
    this.out = new Float32Array(chunkSamples);
    this.filled = 0;
    this.running = true;
    this.port.onmessage = event => { if (event.data === "stop") this.running = false; };
  }

  filtered(n) {
    const kernel = this.kernel, raw = this.raw, base = n - this.rawStart;
    let sum = 0;
    for (let k = 0; k < kernel.length; k++) sum += kernel[k] * raw[base - k];
    return sum;
  }

  emit(value) {
    this.out[this.filled++] = value;
    if (this.filled < this.out.length) return;
    const pcm = new Int16Array(this.out.length);
    for (let i = 0; i < pcm.length; i++) {
      const s = Math.max(-1, Math.min(1, this.out[i]));
      pcm[i] = s < 0 ? s * 0x8000 : s * 0x7fff;
    }
    this.port.postMessage(pcm.buffer, [pcm.buffer]);
    this.filled = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length) {
      const n = channels[0].length;
      const joined = new Float32Array(this.raw.length + n);
      joined.set(this.raw);
      for (const channel of channels) {
        for (let i = 0; i < n; i++) joined[this.raw.length + i] += channel[i] / channels.length;
      }
      this.raw = joined;
      const last = this.rawStart + this.raw.length - 1;
      while (Math.floor(this.position) + 1 <= last) {
        const i = Math.floor(this.position), frac = this.position - i;
        const a = this.filtered(i), b = this.filtered(i + 1);
        this.emit(a + (b - a) * frac);
        this.position += this.step;
      }
      const drop = Math.floor(this.position) - (this.kernel.length - 1) - this.rawStart;
      if (drop > 0) {
        this.raw = this.raw.slice(drop);
        this.rawStart += drop;
      }
    }
    return this.running;
  }
}

registerProcessor("ser-downsampler", Downsampler);
