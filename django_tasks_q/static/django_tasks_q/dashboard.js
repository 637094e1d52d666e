// Keeps the task dashboard current: fetches the page again every few seconds and swaps in the
// new panels. Without this script the page is the same, only static. Nothing runs while the
// tab is hidden, and a fetch starts only after the previous one ended, so a slow database
// never sees requests pile up from one open tab.
"use strict";

(function () {
    const panels = document.getElementById("tasks-q-dashboard");
    const status = document.getElementById("tasks-q-refresh");
    if (!panels || !status || !window.fetch || !window.DOMParser) {
        return;
    }
    const seconds = Number(panels.dataset.refreshSeconds) || 5;
    const every = "Refreshes every " + seconds + " s.";
    let timer = null;
    let stopped = false;
    let busy = false;

    function say(text, isError) {
        status.textContent = text;
        status.classList.toggle("tasks-q-refresh-error", Boolean(isError));
    }

    function schedule() {
        clearTimeout(timer);
        if (!stopped && !document.hidden) {
            timer = setTimeout(refresh, seconds * 1000);
        }
    }

    // Someone selecting an error message to copy it should not see it vanish under the cursor.
    function selecting() {
        const selection = window.getSelection();
        return selection && !selection.isCollapsed && panels.contains(selection.anchorNode);
    }

    async function refresh() {
        clearTimeout(timer);
        if (busy) {
            return; // the fetch under way schedules the next one
        }
        if (selecting()) {
            schedule();
            return;
        }
        busy = true;
        try {
            const response = await fetch(window.location.href, {
                credentials: "same-origin",
                cache: "no-store",
                headers: {Accept: "text/html"},
            });
            if (!response.ok) {
                throw new Error("HTTP " + response.status);
            }
            const page = new DOMParser().parseFromString(await response.text(), "text/html");
            const fresh = page.getElementById("tasks-q-dashboard");
            if (!fresh) {
                // Signed out, or the permission was withdrawn: the login page came back.
                stopped = true;
                say("Stopped refreshing: reload the page (signed out?).", true);
                return;
            }
            const open = Array.from(panels.querySelectorAll("details[open][id]"), (d) => d.id);
            panels.replaceChildren(...fresh.childNodes);
            for (const id of open) {
                const details = document.getElementById(id);
                if (details) {
                    details.open = true;
                }
            }
            say(every, false);
        } catch (error) {
            say("Refresh failed (" + error.message + "); trying again.", true);
        } finally {
            busy = false;
        }
        schedule();
    }

    document.addEventListener("visibilitychange", function () {
        if (stopped) {
            return;
        }
        if (document.hidden) {
            clearTimeout(timer);
            say("Paused while the tab is hidden.", false);
        } else {
            refresh();
        }
    });

    say(every, false);
    schedule();
})();
