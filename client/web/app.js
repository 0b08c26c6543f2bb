// A placeholder for the web client: opens a WebSocket to the server that
// served this page and says whether it opened (the server's tests and the
// Content-Security-Policy check use it).

const output = document.getElementById("link");
const scheme = location.protocol === "https:" ? "wss:" : "ws:";
const socket = new WebSocket(`${scheme}//${location.host}/`);
socket.addEventListener("open", () => {
  output.textContent = "open";
  socket.close(1000);
});
socket.addEventListener("error", () => {
  output.textContent = "failed";
});
