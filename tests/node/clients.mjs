// Drives Turnout with JavaScript clients as their users would: openai-node (responses, streams,
// completions, embeddings) and the Vercel AI SDK's default provider `openai(model)`, which speaks the
// Responses API (text, a stream, a tool round trip). Prints one JSON object for tests/test_node_clients.py.
import OpenAI from "openai";
import { generateText, jsonSchema, stepCountIs, streamText, tool } from "ai";
import { createOpenAI } from "@ai-sdk/openai";

const baseURL = process.argv[2] + "/v1";
const out = {};
const client = new OpenAI({ baseURL, apiKey: "sk-node", maxRetries: 0 });

const r = await client.responses.create({ model: "chat", input: "hello from node", instructions: "Be brief." });
out.responses_text = r.output_text;
const follow = await client.responses.create({ model: "chat", input: "and again", previous_response_id: r.id });
out.previous_response_id = follow.previous_response_id;
const stream = client.responses.stream({ model: "chat", input: "stream from node" });
out.stream_types = [];
for await (const e of stream) out.stream_types.push(e.type);
out.stream_text = (await stream.finalResponse()).output_text;
out.completion = (await client.completions.create({ model: "chat", prompt: "legacy", max_tokens: 50 })).choices[0].text;
const emb = await client.embeddings.create({ model: "embed", input: ["a", "b"] });  // base64 by default in node
out.embedding_lengths = emb.data.map((d) => d.embedding.length);
out.embedding_first = emb.data[0].embedding.slice(0, 3);

const openai = createOpenAI({ baseURL, apiKey: "sk-node" });
out.ai_text = (await generateText({ model: openai("chat"), prompt: "hello from the AI SDK" })).text;
let streamed = "";
for await (const t of streamText({ model: openai("chat"), prompt: "stream from the AI SDK" }).textStream) streamed += t;
out.ai_stream = streamed;
const weather = tool({
  description: "Weather for a city",
  inputSchema: jsonSchema({ type: "object", properties: { city: { type: "string" } }, required: ["city"],
                            additionalProperties: false }),
  execute: async ({ city }) => `3C in ${city}`,
});
const steps = await generateText({ model: openai("chat"), prompt: "weather in Oslo?", tools: { get_weather: weather },
                                   stopWhen: stepCountIs(3) });
out.ai_tool_calls = steps.steps.flatMap((s) => s.toolCalls.map((c) => c.toolName));
out.ai_tool_text = steps.text;
console.log(JSON.stringify(out));
