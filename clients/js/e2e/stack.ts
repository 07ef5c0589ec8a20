// The real thing for the end-to-end tests: the gateway binary, a tansu broker
// and the stand-in MesaYa API serving the sample restaurant, with the dev
// floor-plan page, all started by `mesaya-dev --driven` (tests/testkit). The
// test drives the upstream side through JSON commands on its stdin: events,
// a gateway restart, the true state of a section.
//
// The binaries come from the workspace's cargo build (scripts/test.sh builds
// them; MESAYA_DEV_BIN and MESAYA_GATEWAY_BIN override the paths), tansu from
// TANSU_BIN (scripts/ensure-tansu.sh).

import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const repo = fileURLToPath(new URL("../../../../", import.meta.url));

function binary(variable: string, name: string): string {
  const path = process.env[variable] ?? `${repo}target/debug/${name}`;
  if (!existsSync(path)) {
    throw new Error(
      `${path} is missing: build it with \`cargo build -p mesaya-realtime -p mesaya-testkit\` (scripts/test.sh does), or set ${variable}`,
    );
  }
  return path;
}

export interface Hello {
  gateway: string;
  admin: string;
  page: string;
  sections: { id: string; name: string }[];
  seed: string;
}

export type Answer = Record<string, unknown>;

/** How long one command may take: a restart waits for a drain and a new process's readiness. */
const COMMAND_TIMEOUT_MS = 90_000;

export class Stack {
  readonly #child: ChildProcessWithoutNullStreams;
  readonly #answers: ((line: string) => void)[] = [];
  readonly #lines: string[] = [];
  #stderr = "";
  #exited: string | undefined;
  hello!: Hello;

  private constructor(child: ChildProcessWithoutNullStreams) {
    this.#child = child;
    child.stderr.on("data", (chunk: Buffer) => {
      this.#stderr = (this.#stderr + chunk.toString()).slice(-20_000);
    });
    child.on("exit", (code, signal) => {
      this.#exited = `mesaya-dev exited (${code ?? signal}); its stderr:\n${this.#stderr}`;
      for (const answer of this.#answers.splice(0)) answer("");
    });
    createInterface({ input: child.stdout }).on("line", (line) => {
      const waiting = this.#answers.shift();
      if (waiting) waiting(line);
      else this.#lines.push(line);
    });
  }

  /**
   * Starts the stack; `gatewayEnv` goes to the gateway over the dev command's own settings,
   * `devEnv` to the dev command (e.g. PAGE_TOKEN_LIFETIME).
   */
  static async start(gatewayEnv: Record<string, string> = {}, devEnv: Record<string, string> = {}): Promise<Stack> {
    const settings = Object.entries(gatewayEnv).map(([name, value]) => `${name}=${value}`);
    const args = ["--driven", "--broker", "tansu", binary("MESAYA_GATEWAY_BIN", "mesaya-realtime"), ...settings];
    const child = spawn(binary("MESAYA_DEV_BIN", "mesaya-dev"), args, {
      env: { ...process.env, PORT: "0", ADMIN_PORT: "0", PAGE_PORT: "0", ...devEnv },
    });
    const stack = new Stack(child);
    stack.hello = JSON.parse(await stack.#next()) as Hello;
    return stack;
  }

  /** Sends one command and returns its answer; throws on `{error}`. */
  async command(name: string, args: Record<string, unknown> = {}): Promise<Answer> {
    const answer = this.#next();
    this.#child.stdin.write(`${JSON.stringify({ do: name, ...args })}\n`);
    const reply = JSON.parse(await answer) as Answer;
    if (typeof reply.error === "string") throw new Error(`${name}: ${reply.error}`);
    return reply;
  }

  async token(roles: string[], expiresIn: number): Promise<string> {
    return (await this.command("token", { roles, expiresIn })).token as string;
  }

  /** The gateway's /metrics lines, from its admin listener. */
  async metricLines(): Promise<string[]> {
    return (await (await fetch(`${this.hello.admin}/metrics`)).text()).split("\n");
  }

  /** An unlabelled metric's value (or the first series of a labelled one); 0 when absent. */
  async metric(name: string): Promise<number> {
    const line = (await this.metricLines()).find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
    return line ? Number(line.split(" ").at(-1)) : 0;
  }

  /** The sum of a metric's series (every label set); 0 when absent. */
  async metricSum(name: string): Promise<number> {
    const series = (await this.metricLines()).filter((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
    return series.reduce((sum, line) => sum + Number(line.split(" ").at(-1)), 0);
  }

  /** Closes stdin (the stack stops the gateway) and waits for the process. */
  async stop(): Promise<void> {
    if (this.#exited !== undefined) return;
    const exited = new Promise((resolve) => this.#child.once("exit", resolve));
    this.#child.stdin.end();
    const timer = setTimeout(() => this.#child.kill("SIGKILL"), 30_000);
    await exited;
    clearTimeout(timer);
  }

  #next(): Promise<string> {
    const ready = this.#lines.shift();
    if (ready !== undefined) return Promise.resolve(ready);
    if (this.#exited !== undefined) return Promise.reject(new Error(this.#exited));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no answer within ${COMMAND_TIMEOUT_MS} ms`)), COMMAND_TIMEOUT_MS);
      this.#answers.push((line) => {
        clearTimeout(timer);
        if (this.#exited !== undefined && line === "") reject(new Error(this.#exited));
        else resolve(line);
      });
    });
  }
}

/** Polls `condition` every 20 ms until it holds; throws `what` after `timeoutMs`. */
export async function waitFor(what: string, condition: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
