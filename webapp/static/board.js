// Drag a card to another stage: the move is posted with the card's version, so a card
// someone else moved first is not moved again (409: the board reloads with the message).
document.addEventListener("DOMContentLoaded", () => {
  const board = document.querySelector(".board");
  if (!board || typeof Sortable === "undefined") return;
  const message = document.getElementById("board-message");
  // How many cards are ticked for a bulk move or assignment.
  const selected = document.getElementById("selected-count");
  board.addEventListener("change", () => {
    selected.textContent = String(board.querySelectorAll("input[name=member]:checked").length);
  });
  // A moved card changes two stages' counts by one each (columns may show only some cards).
  const bump = (list, by) => {
    const count = list.closest(".column").querySelector(".stage-count");
    count.textContent = String(Number(count.textContent) + by);
  };
  board.querySelectorAll(".cards").forEach((list) => {
    Sortable.create(list, {
      group: "board",
      animation: 120,
      onEnd: async (event) => {
        if (event.from === event.to) return;
        const card = event.item;
        const body = new URLSearchParams({
          member_id: card.dataset.member, stage: event.to.dataset.stage,
          version: card.dataset.version,
        });
        const response = await fetch(`/worklists/${encodeURIComponent(board.dataset.slug)}/move`, {
          method: "POST", body, credentials: "same-origin",
          headers: { "X-CSRF-Token": board.dataset.csrf, "Accept": "application/json" },
        });
        const answer = await response.json().catch(() => ({}));
        if (!response.ok) {
          message.textContent = answer.error || "the move was not saved";
          message.hidden = false;
          event.from.insertBefore(card, event.from.children[event.oldIndex] || null);
          if (response.status === 409) setTimeout(() => window.location.reload(), 1500);
        } else {
          card.dataset.version = answer.version;
          const pick = card.querySelector("input[name=member]");
          pick.value = `${answer.version}:${card.dataset.member}`;
          card.querySelector("input[name=version]").value = answer.version;
          card.querySelector("select[name=stage]").value = answer.stage;
          bump(event.from, -1);
          bump(event.to, +1);
        }
      },
    });
  });
});
