// The seed document's browser snippet, runnable in Node.js:
//   node --experimental-websocket examples/js/seed-client.js [ws-url]   (Node 20)
//   node examples/js/seed-client.js [ws-url]                            (Node 22+)
// Prints one line per event, as the seed's "Expected Output" shows.
const url = process.argv[2] || 'ws://localhost:8084/ws?username=test-user';

const ws = new WebSocket(url);

ws.onopen = () => console.log('open');

ws.onmessage = (event) => {
  const data = JSON.parse(event.data);
  console.log('Event:', data.type, JSON.stringify(data));
};

ws.onclose = (event) => console.log('closed', event.code, event.reason);
