// What teams pick today for this job, as `bc-load fanout` measures it beside Backchannel:
// a Socket.IO server on its Redis adapter, doing what an app built on Socket.IO does for
// a support conversation, and nothing more.
//
// A client connects over WebSocket (`/socket.io/?EIO=4&transport=websocket`) with
// `auth: { room, role, id }`: agents join `ROOM:agents` and `ROOM:all`, a customer
// `ROOM:all`, and each is told `joined`. A `note` (agents only) is sent to `ROOM:agents`,
// a `send` (a message) to `ROOM:all`, both as the same `event` object Backchannel's
// frame carries (a per-room seq, a fresh id, the time, the actor, the body), and the
// sender's acknowledgement callback gets `{ type: 'ok', seq, id }`. Every broadcast goes
// through the adapter: with Redis (the default, `--redis URL`) it is also published for
// other nodes, as it is in a deployment of more than one; `--no-redis` keeps Socket.IO's
// in-memory adapter.
//
// There is no store and no authentication (the handshake is trusted): it is a point of
// comparison, not a product. The load generator reads the `listening on http://ADDR`
// line from stdout, as it does for the relay and Backchannel.
//
//     node bench/socketio/server.js [--listen 127.0.0.1:0] [--redis redis://127.0.0.1:6379 | --no-redis]

'use strict';

const http = require('node:http');
const crypto = require('node:crypto');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const { createClient } = require('redis');

function parseArgs(argv) {
  const options = { listen: '127.0.0.1:0', redis: 'redis://127.0.0.1:6379' };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '--listen' && i + 1 < argv.length) options.listen = argv[++i];
    else if (flag === '--redis' && i + 1 < argv.length) options.redis = argv[++i];
    else if (flag === '--no-redis') options.redis = null;
    else {
      process.stderr.write(`usage: server.js [--listen ADDR] [--redis URL | --no-redis]\n`);
      process.exit(2);
    }
  }
  const at = options.listen.lastIndexOf(':');
  options.host = options.listen.slice(0, at);
  options.port = Number(options.listen.slice(at + 1));
  return options;
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  const httpServer = http.createServer();
  const io = new Server(httpServer, {
    // The load generator speaks WebSocket from the start, as browsers do once upgraded.
    transports: ['websocket'],
    serveClient: false,
  });
  const redisClients = [];
  if (options.redis) {
    // A Redis that is not there fails the start (and the run) within a second or so,
    // rather than leaving the load generator waiting for an address.
    const pub = createClient({
      url: options.redis,
      socket: { reconnectStrategy: (retries) => (retries > 5 ? new Error('Redis is unreachable') : 200) },
    });
    const sub = pub.duplicate();
    for (const client of [pub, sub]) {
      client.on('error', (e) => process.stderr.write(`redis: ${e.message}\n`));
    }
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(createAdapter(pub, sub));
    redisClients.push(pub, sub);
  }

  const seqs = new Map();
  const nextSeq = (room) => {
    const seq = (seqs.get(room) || 0) + 1;
    seqs.set(room, seq);
    return seq;
  };

  io.on('connection', (socket) => {
    const { room, role, id } = socket.handshake.auth || {};
    if (typeof room !== 'string' || (role !== 'agent' && role !== 'customer')) {
      socket.disconnect(true);
      return;
    }
    const actor = { id: String(id), role };
    socket.join(role === 'agent' ? [`${room}:agents`, `${room}:all`] : `${room}:all`);
    socket.emit('joined', room);

    const deliver = (audience, kind, command, ack) => {
      if (!command || typeof command.body !== 'string') return;
      const seq = nextSeq(room);
      const event = {
        id: crypto.randomUUID(),
        at: new Date().toISOString(),
        actor,
        kind,
        body: command.body,
      };
      if (kind === 'note') {
        event.note_type = 'general';
        event.audience = 'agents';
      }
      io.to(`${room}:${audience}`).emit('event', {
        type: 'event',
        conversation_id: room,
        seq,
        event,
      });
      if (typeof ack === 'function') ack({ type: 'ok', seq, id: event.id });
    };
    socket.on('note', (command, ack) => {
      // Notes are the team's: a customer's is refused, never delivered.
      if (role !== 'agent') {
        if (typeof ack === 'function') ack({ type: 'error', code: 'forbidden' });
        return;
      }
      deliver('agents', 'note', command, ack);
    });
    socket.on('send', (command, ack) => deliver('all', 'message', command, ack));
  });

  const stop = () => {
    io.close();
    for (const client of redisClients) client.quit().catch(() => {});
    setTimeout(() => process.exit(0), 200).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  httpServer.listen(options.port, options.host, () => {
    const { address, port } = httpServer.address();
    process.stdout.write(`listening on http://${address}:${port}\n`);
  });
}

main().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});
