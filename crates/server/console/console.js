// Placeholder: the console (branch `console`) replaces this file.
document.getElementById("status").textContent = "The console is not built into this binary yet.";
