import type { Socket } from "node:net";

/**
 * aedes buffers a whole packet before it looks at it, up to the 256 MB MQTT allows, and has no
 * size limit of its own. This reads the fixed header of each packet as the bytes go by (aedes
 * pulls them with `socket.read()`) and cuts a connection whose next packet declares more than
 * `limit` bytes, before its body arrives. It only counts: no bytes are copied.
 */
export function guardPacketSize(socket: Socket, limit: number, onOversize: () => void): void {
  let remaining = 0; // body bytes of the current packet still to come
  let lengthBytes = -1; // -1: the next byte is a packet type; 0-3: inside the remaining-length field
  let length = 0;
  let multiplier = 1;
  const fits = (chunk: Buffer): boolean => {
    let i = 0;
    while (i < chunk.length) {
      if (remaining > 0) {
        const skip = Math.min(remaining, chunk.length - i);
        remaining -= skip;
        i += skip;
      } else if (lengthBytes < 0) {
        i++;
        lengthBytes = length = 0;
        multiplier = 1;
      } else {
        const byte = chunk[i++]!;
        length += (byte & 0x7f) * multiplier;
        multiplier *= 128;
        lengthBytes++;
        if ((byte & 0x80) === 0) {
          if (length > limit) return false;
          remaining = length;
          lengthBytes = -1;
        } else if (lengthBytes === 4) {
          return false; // a malformed length: aedes would drop the connection too
        }
      }
    }
    return true;
  };
  const read = socket.read.bind(socket);
  socket.read = (size?: number) => {
    const chunk: unknown = read(size);
    if (Buffer.isBuffer(chunk) && !fits(chunk)) {
      onOversize();
      socket.destroy();
      return null;
    }
    return chunk;
  };
}
