// What a Node application does through the proxy with the official OpenAI JS SDK: chat (whole
// and streamed), embeddings (the SDK asks base64 by default), a response and its fetch by id,
// an audio upload transcribed whole and as events (a form as Node's fetch writes one), and a
// replay miss. Each call's answer and the proxy's headers, as one JSON line per call on
// stdout, for tests/e2e/test_e2e_js_sdk.py to judge. Usage: node flows.mjs FLOW, the proxy's
// URL in OPENAI_BASE_URL and the key in OPENAI_API_KEY, which the SDK reads as a test suite's
// client would.
import OpenAI, { toFile } from "openai";

const [flow] = process.argv.slice(2);
const client = new OpenAI({ maxRetries: 2, timeout: 10_000 });
const say = (call, response, extra) =>
  console.log(JSON.stringify({
    call,
    cache: response.headers.get("x-repro-cache"),
    key: response.headers.get("x-repro-key"),
    ...extra,
  }));
const ask = { model: "gpt-4o-mini", messages: [{ role: "user", content: "Name a colour." }] };

async function readwrite() {
  for (const round of [1, 2]) {
    const { data, response } = await client.chat.completions.create(ask).withResponse();
    say("chat", response, { content: data.choices[0].message.content, round, id: data._request_id });
  }
  const streamed = { ...ask, stream: true, messages: [{ role: "user", content: "Name a river." }] };
  for (const round of [1, 2]) {
    const { data, response } = await client.chat.completions.create(streamed).withResponse();
    let content = "";
    for await (const chunk of data) content += chunk.choices[0]?.delta?.content ?? "";
    say("stream", response, { content, round });
  }
  const embed = { model: "text-embedding-3-small", input: "hello" };
  for (const round of [1, 2]) {
    const { data, response } = await client.embeddings.create(embed).withResponse();
    say("embedding", response, { vector: data.data[0].embedding, round });
  }
  const { data: made, response } = await client.responses.create({ model: "gpt-4o-mini", input: "hi" })
    .withResponse();
  const fetched = await client.responses.retrieve(made.id);
  say("response", response, { id: made.id, fetched: fetched.id, text: made.output_text });
}

async function transcribe() {
  const clip = Buffer.from("ID3 a clip a Python test uploads too");
  for (const round of [1, 2]) {
    const file = await toFile(clip, `clip-${round}.mp3`, { type: "audio/mpeg" });
    const { data, response } = await client.audio.transcriptions
      .create({ model: "whisper-1", file }).withResponse();
    say("transcription", response, { text: data.text, round });
  }
  for (const round of [1, 2]) {
    const file = await toFile(clip, `clip-${round}.mp3`, { type: "audio/mpeg" });
    const { data, response } = await client.audio.transcriptions
      .create({ model: "gpt-4o-transcribe", file, stream: true }).withResponse();
    let deltas = "";
    let text = null;
    for await (const event of data) {
      if (event.type === "transcript.text.delta") deltas += event.delta;
      if (event.type === "transcript.text.done") text = event.text;
    }
    say("streamed transcription", response, { text, deltas, round });
  }
}

async function replay() {
  try {
    await client.chat.completions.create({ ...ask, messages: [{ role: "user", content: "Never recorded." }] });
    console.log(JSON.stringify({ call: "miss", error: null }));
  } catch (error) {
    console.log(JSON.stringify({ call: "miss", status: error.status, code: error.code, type: error.type }));
  }
}

await ({ readwrite, transcribe, replay })[flow]();
