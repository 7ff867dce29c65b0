// Exposes one function to the page: a way to receive the results from the main process.
import { contextBridge, ipcRenderer } from 'electron'

contextBridge.exposeInMainWorld('shmlinkDemo', {
  onResults: (show: (lines: string[]) => void) => ipcRenderer.on('results', (_event, lines: string[]) => show(lines)),
})
