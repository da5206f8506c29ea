import { TethralError, isTethralError } from "../../src/core/errors";
import { type ClusterHandler, type ClusterLink, type ForwardedMessage, NO_ANSWER } from "../../src/core/ports/cluster";

/**
 * An in-process stand-in for the broker between members, for engine tests of cluster mode:
 * calls reach the named member's handler (errors come back as TethralErrors, as over MQTT), and
 * forwarded messages reach every member, in order, a turn later. `partition(member)` cuts a member
 * off (its calls and messages are lost both ways) to stand for a dead or frozen member.
 * `loseAnswer(member, method)`, asked once the member has run a call, loses its answer (or its
 * refusal) when it returns true: a member that did the work and died before it could answer.
 */
export class LocalBroker {
  readonly members = new Map<string, { call: ClusterHandler; message(m: ForwardedMessage): void }>();
  readonly cut = new Set<string>();
  loseAnswer: (member: string, method: string) => boolean | Promise<boolean> = () => false;

  link(): ClusterLink {
    return linkOn(this);
  }
}

function linkOn(broker: LocalBroker): ClusterLink {
  let me = "";
  return {
      get connected() {
        return me !== "" && !broker.cut.has(me);
      },
      async start(member, handlers) {
        me = member;
        broker.members.set(member, handlers);
      },
      async call(member, method, args, timeoutMs) {
        const target = broker.members.get(member);
        const noAnswer = async (): Promise<never> => {
          await new Promise((r) => setTimeout(r, Math.min(timeoutMs, 200)));
          throw new TethralError("UNAVAILABLE", `cluster member ${member} did not answer`, [NO_ANSWER]);
        };
        if (!target || broker.cut.has(member) || broker.cut.has(me)) return noAnswer();
        let answer: unknown;
        try {
          answer = await target.call(method, structuredClone(args));
        } catch (err) {
          if (await broker.loseAnswer(member, method)) return noAnswer();
          if (isTethralError(err)) throw new TethralError(err.code, err.message, err.details);
          throw err;
        }
        if (await broker.loseAnswer(member, method)) return noAnswer();
        return structuredClone(answer);
      },
      forward(message) {
        if (broker.cut.has(me)) return;
        const copy = structuredClone(message);
        setImmediate(() => {
          for (const [id, m] of broker.members) if (!broker.cut.has(id)) m.message(copy);
        });
      },
      async stop() {
        broker.members.delete(me);
      },
  };
}
