"""What the browser tests do on a ComfyUI page, the same on both frontends and both renderers: open it, drop a
workflow file on it, read the graph, and type into or pick from a node's widgets as a user does."""
import json
import re

from conftest import RENDERERS, save_setting

READY = "window.app && window.app.graph && window.app.extensionManager && app.extensionManager.setting"


class ComfyPage:
    def __init__(self, browser, server, renderer: str):
        self.server, self.renderer, self.vue = server, renderer, RENDERERS[renderer]
        self.errors: list[str] = []  # console errors and uncaught exceptions from the pack's scripts
        save_setting(server, "Comfy.VueNodes.Enabled", self.vue)
        save_setting(server, "Comfy.TutorialCompleted", True)  # no templates dialog over the canvas
        self.page = browser.new_page(viewport={"width": 1600, "height": 1000})
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda err: self._pack_error(f"{err}\n{err.stack}"))
        self.page.route("**/*", self._route)
        self.open()

    @staticmethod
    def _route(route):
        # The frontends ask api.comfy.org for releases and packs and probe the model URLs of a workflow: refused.
        if re.match(r"^(http|ws)://127\.0\.0\.1[:/]", route.request.url):
            route.continue_()
        else:
            route.abort()

    def _console(self, message):
        if message.type == "error":
            self._pack_error(f"{message.text} at {message.location.get('url', '')}")

    def _pack_error(self, text: str):
        if "ComfyUI-ConsistentID" in text or "consistentid" in text.lower():
            self.errors.append(text)

    def open(self):
        self.page.goto(f"http://127.0.0.1:{self.server.port}/")
        self.page.wait_for_function(READY, timeout=90_000)
        self.frontend = self.page.evaluate("window.__COMFYUI_FRONTEND_VERSION__")

    def close(self):
        self.page.close()

    def drop_workflow(self, path):
        """Drop a workflow file on the canvas, as dragging it from the file manager does."""
        self.page.evaluate("""([name, text]) => {
            const file = new File([text], name, {type: "application/json"});
            const data = new DataTransfer();
            data.items.add(file);
            const target = document.querySelector("canvas#graph-canvas") ?? document.body;
            for (const type of ["dragenter", "dragover", "drop"])
                target.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: data}));
        }""", [path.name, path.read_text()])
        saved = json.loads(path.read_text())
        self.page.wait_for_function("n => app.graph.nodes.length === n && !app.configuringGraph", arg=len(saved["nodes"]),
                                    timeout=30_000)
        self.page.wait_for_timeout(300)  # afterConfigureGraph and the renderer's first frame

    def graph(self) -> dict:
        return self.page.evaluate("""() => ({
            nodes: Object.fromEntries(app.graph.nodes.map(n => [n.id, {
                type: n.type, title: n.title, registered: n.type in LiteGraph.registered_node_types,
                widgets: Object.fromEntries((n.widgets ?? []).map(w => [w.name, {value: w.value, label: w.label}])),
            }])),
            links: app.graph.serialize().links,
        })""")

    def widget(self, node_id: int, name: str) -> dict:
        return self.graph()["nodes"][str(node_id)]["widgets"][name]

    def disconnect(self, node_id: int, input_name: str):
        self.page.evaluate("([id, name]) => { const n = app.graph.getNodeById(id); n.disconnectInput(n.findInputSlot(name)); }",
                           [node_id, input_name])

    def _focus(self, node_id: int):
        self.page.evaluate("""id => { const c = app.canvas, n = app.graph.getNodeById(id);
            c.ds.scale = 1; c.centerOnNode(n); c.setDirty(true, true); }""", node_id)
        self.page.wait_for_timeout(300)

    def _canvas_point(self, node_id: int, name: str) -> tuple[float, float]:
        """Where a widget sits on the screen (classic canvas)."""
        return tuple(self.page.evaluate("""([id, name]) => {
            const n = app.graph.getNodeById(id), w = n.widgets.find(w => w.name === name);
            const ds = app.canvas.ds, r = app.canvas.canvas.getBoundingClientRect();
            const x = n.pos[0] + n.size[0] / 2, y = n.pos[1] + (w.y ?? w.last_y) + (w.computedHeight ?? 20) / 2;
            return [r.left + (x + ds.offset[0]) * ds.scale, r.top + (y + ds.offset[1]) * ds.scale];
        }""", [node_id, name]))

    def _vue_widget(self, node_id: int, name: str):
        node = self.page.locator(f'[data-node-id="{node_id}"]')
        named = node.locator(f'[data-widget-name="{name}"]')
        if named.count():  # frontend 1.3x+
            return named
        # frontend 1.27: a widget is a <p> with its label and the control beside it
        return node.locator(f"xpath=.//p[contains(normalize-space(), '{name}')]/..")

    def type_number(self, node_id: int, name: str, value: int):
        self._focus(node_id)
        if self.vue:
            widget = self._vue_widget(node_id, name)
            field = widget.locator("input").first
            if widget.get_attribute("data-widget-name"):  # frontend 1.3x+: a drag layer lies over the field
                field.fill(str(value))
            else:  # frontend 1.27's number field takes keystrokes and commits on blur
                field.click()
                field.press("Control+a")
                field.press_sequentially(str(value))
            field.press("Enter")
            field.blur()
        else:
            x, y = self._canvas_point(node_id, name)
            self.page.mouse.click(x, y)
            field = self.page.locator(".graphdialog input").first
            field.fill(str(value))
            field.press("Enter")
        self.page.wait_for_timeout(300)

    def choose(self, node_id: int, name: str, option: str):
        self._focus(node_id)
        if self.vue:
            self._vue_widget(node_id, name).locator('[role="combobox"]').first.click()
            self.page.get_by_role("option", name=option, exact=True).click()
        else:
            x, y = self._canvas_point(node_id, name)
            self.page.mouse.click(x, y)
            self.page.locator(".litecontextmenu .litemenu-entry", has_text=re.compile(f"^{option}$")).first.click()
        self.page.wait_for_timeout(300)

    def shown_label(self, node_id: int, name: str) -> str:
        """The label the user sees for a widget: the DOM's under Nodes 2.0, the canvas's label otherwise."""
        if self.vue:
            return self._vue_widget(node_id, name).inner_text().splitlines()[0].strip()
        widget = self.widget(node_id, name)
        return widget["label"] or name

    def message(self, summary: str) -> str:
        """The text of the notification whose title is ``summary``, once shown (each frontend draws its own)."""
        self.page.get_by_text(summary).first.wait_for(timeout=10_000)
        return self.page.locator("body").inner_text()
