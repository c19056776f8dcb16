// HTTP client peer (Node): N sequential GETs of URL with the global fetch
// (undici, keep-alive by default); checks every answer; prints one RESULT line.
const url = process.argv[2];
const n = Number(process.argv[3] || 10000);
async function main() {
  let r = await fetch(url); // warm-up: the connection is made here
  if (r.status !== 200 || (await r.text()) !== "Hello, World!") throw new Error("unexpected answer");
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    r = await fetch(url);
    const body = await r.text();
    if (r.status !== 200 || body !== "Hello, World!") throw new Error("bad answer: " + r.status);
  }
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(`RESULT requests=${n} seconds=${secs.toFixed(4)} rps=${(n / secs).toFixed(1)}`);
}
main();
