// The page: shows the lines the main process sends (see src/preload.ts).
window.shmlinkDemo.onResults((lines) => {
  const list = document.getElementById('results')
  list.replaceChildren(...lines.map((line) => Object.assign(document.createElement('li'), { textContent: line })))
})
